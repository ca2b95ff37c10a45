"""Deterministic simulation of the replication protocol (wal/replication/protocol.py).

The real `Replica` code runs; the network, the disks and time are a seeded scheduler. Each step
is one event chosen by the seed's random generator: a client append, a message delivered (any
in flight: reordering), lost or duplicated, an fsync finishing, a retransmit tick, a crash (the
unsynced tail is lost), a restart, a link cut or all links healed, a lease running out, a
compaction, or an election. Elections are an oracle standing in for etcd: one candidate per
epoch, epochs rising; the candidate must still pass the protocol's position check.

After every step the checker asserts:
- every acknowledged (committed) entry is durable on a majority of replicas, crashed ones too;
- no two leaders acknowledged different entries at one offset, and each replica's committed
  prefix equals what was acknowledged;
- a leader of epoch E holds every entry acknowledged by a leader of an epoch <= E;
- at most one replica acknowledges per epoch.

Replay a seed (prints every step):  .venv/bin/python -m tests.replsim --seed N --trace
The full run:                      .venv/bin/python -m tests.replsim --schedules 10000
A broken rule:                     .venv/bin/python -m tests.replsim --broken one-replica-commit
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.sim_store import MemoryStore, Record
from wal.replication.protocol import Action, Committed, Message, Replica, Role, Send, SyncLog


class Violation(Exception):
    """The checker found a broken safety property."""


class OneReplicaCommit(Replica):
    """Broken: commits what the leader alone has durable."""

    def _commit_quorum(self) -> int:
        return 1


class NoOwnEpochRule(Replica):
    """Broken: commits an older epoch's entry by counting replicas, and writes no first record."""

    def _may_commit(self, offset: int) -> bool:
        return True

    def _epoch_start(self) -> list:
        return []


class NoUpToDateCheck(Replica):
    """Broken: serves once a majority answered, even if one of them has a longer log."""

    def _up_to_date(self) -> bool:
        return True


BROKEN: dict[str, type[Replica]] = {
    "one-replica-commit": OneReplicaCommit,
    "no-own-epoch-rule": NoOwnEpochRule,
    "no-up-to-date-check": NoUpToDateCheck,
}


DEFAULT_STEPS = 200
SWARM = (0, 0.3, 1, 1, 3)  # the factors a schedule draws for its event weights (faults: 0 too)


@dataclass(frozen=True, slots=True)
class SimConfig:
    steps: int = DEFAULT_STEPS
    broken: str | None = None  # a key of BROKEN
    replicas: int | None = None  # None: each schedule draws 3 (twice as often) or 5
    max_batch: int | None = None  # None: each schedule draws 1..4 entries per batch


@dataclass(slots=True)
class InFlight:
    source: str
    to: str
    message: Message


@dataclass
class Simulation:
    seed: int
    config: SimConfig = field(default_factory=SimConfig)
    trace: bool = False
    # The replicas' stores: MemoryStore, or tests/sim_walstore.py's real WalStore on a directory.
    # Besides LogStore, a store does what the simulated disk and compactor do (sync, crash,
    # compact) and shows the checker its records (records, durable_records).
    make_store: Callable[[str], Any] = field(default=lambda _rid: MemoryStore())

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        count = self.rng.choice((3, 3, 5))
        count = self.config.replicas or count  # drawn either way: a seed's schedule stays put
        self.ids = [f"r{index}" for index in range(count)]
        self.majority = count // 2 + 1
        self.max_batch = self.config.max_batch or self.rng.randint(1, 4)
        self.replica_class = BROKEN[self.config.broken] if self.config.broken else Replica
        self.stores = {rid: self.make_store(rid) for rid in self.ids}
        self.replicas = {rid: self._boot(rid) for rid in self.ids}
        self.up = set(self.ids)
        self.frozen: set[str] = set()  # up but stopped (SIGSTOP): doing nothing, receiving nothing
        self.network: list[InFlight] = []
        self.cut: set[frozenset[str]] = set()
        self.unsynced: set[str] = set()
        self.epoch = 0  # the oracle's (etcd's) newest epoch
        self.holder: str | None = None  # who won it
        self.acked: list[Record] = []  # the acknowledged prefix, offset by offset
        self.acked_upto: dict[int, int] = {}  # epoch -> highest offset its leader acknowledged
        self.acknowledger: dict[int, str] = {}  # epoch -> the replica that acknowledged in it
        self.appended = 0
        self.step = 0
        self.counts: Counter[str] = Counter()  # events done, by kind (the coverage test reads it)
        self.events: list[tuple[float, Callable[[], str | None]]] = [
            (10, self.client_append),
            (30, self.deliver),
            (1.5, self.drop),
            (1.5, self.duplicate),
            (10, self.fsync),
            (3, self.tick),
            (0.8, self.crash),
            (2, self.restart),
            (0.8, self.cut_link),
            (1, self.heal),
            (2, self.elect),
            (0.4, self.lease_runs_out),
            (0.6, self.freeze),
            (1, self.thaw),
            (1, self.compact),
        ]
        # Swarm testing: each schedule scales the weight of every event but delivery and fsync,
        # some to zero, so that rare mixes (say, many elections and no compaction) occur.
        progress = (self.client_append, self.elect, self.restart, self.tick)
        self.weights = [
            weight
            * (
                1
                if event in (self.deliver, self.fsync)
                else self.rng.choice(SWARM[1:] if event in progress else SWARM)
            )
            for weight, event in self.events
        ]
        self.any_candidate = self.rng.choice((0.1, 0.4, 0.8))
        # How often etcd hands the key on while its holder still leads (frozen or cut off from
        # etcd), and how often that old leader notices its lease deadline before going on.
        self.steal = self.rng.choice((0.02, 0.1, 0.4))
        self.notice = self.rng.choice((0, 0.5, 1))

    def _boot(self, rid: str) -> Replica:
        return self.replica_class(rid, self.ids, self.stores[rid], self.max_batch)

    # --- running ---

    def run(self) -> None:
        for step in range(self.config.steps):
            self.step = step
            what = None
            for _attempt in range(20):  # an event with nothing to act on is drawn again
                (_, event) = self.rng.choices(self.events, self.weights)[0]
                what = event()
                if what:
                    self.counts[what.split(" ", 1)[0]] += 1
                    break
            if self.trace and what:
                print(f"{step:4} {what}")
            self.check()

    def apply(self, rid: str, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.network.append(InFlight(rid, action.to, action.message))
            elif isinstance(action, SyncLog):
                self.unsynced.add(rid)
            elif isinstance(action, Committed):
                self.acknowledge(rid, action)

    def pick(self, population):
        return self.rng.choice(sorted(population)) if population else None

    # --- events ---

    def client_append(self) -> str | None:
        leaders = [rid for rid in sorted(self.running()) if self.replicas[rid].is_leader()]
        if not leaders:
            return None
        rid = self.rng.choice(leaders)
        self.appended += 1
        offset, actions = self.replicas[rid].append(b"p%d" % self.appended)
        self.apply(rid, actions)
        return f"append p{self.appended} at {rid} -> offset {offset}"

    def _take(self) -> InFlight | None:
        if not self.network:
            return None
        # A random message's link, and on it mostly the oldest message (a link is mostly in
        # order, links are independent of each other), else that message itself: reordering.
        index = self.rng.randrange(len(self.network))
        if self.rng.random() < 0.7:
            chosen = self.network[index]
            index = next(
                i
                for i, flight in enumerate(self.network)
                if flight.source == chosen.source and flight.to == chosen.to
            )
        return self.network.pop(index)

    def deliver(self) -> str | None:
        flight = self._take()
        if flight is None:
            return None
        if flight.to in self.frozen:  # it waits in the socket until the process is thawed
            self.network.append(flight)
            return None
        if flight.to not in self.up or frozenset((flight.source, flight.to)) in self.cut:
            return f"lost {flight.source}->{flight.to} {flight.message}"
        self.apply(flight.to, self.replicas[flight.to].on_message(flight.message))
        self.counts[type(flight.message).__name__] += 1
        return f"deliver {flight.source}->{flight.to} {flight.message}"

    def drop(self) -> str | None:
        flight = self._take()
        return f"drop {flight.source}->{flight.to} {flight.message}" if flight else None

    def duplicate(self) -> str | None:
        if not self.network:
            return None
        flight = self.rng.choice(self.network)
        self.network.append(InFlight(flight.source, flight.to, flight.message))
        return f"duplicate {flight.source}->{flight.to} {flight.message}"

    def fsync(self) -> str | None:
        rid = self.pick(self.unsynced & self.running())
        if rid is None:
            return None
        self.unsynced.discard(rid)
        self.stores[rid].sync()
        self.apply(rid, self.replicas[rid].on_synced())
        return f"fsync {rid} durable_end {self.stores[rid].durable_end()}"

    def tick(self) -> str | None:
        rid = self.pick(self.running())
        if rid is None:
            return None
        self.apply(rid, self.replicas[rid].on_tick())
        return f"tick {rid}"

    def crash(self) -> str | None:
        rid = self.pick(self.up)
        if rid is None:
            return None
        self.stores[rid].crash()
        self.up.discard(rid)
        self.frozen.discard(rid)
        self.unsynced.discard(rid)
        return f"crash {rid} (kept {self.stores[rid].durable_end()} entries)"

    def restart(self) -> str | None:
        rid = self.pick(set(self.ids) - self.up)
        if rid is None:
            return None
        self.replicas[rid] = self._boot(rid)
        self.up.add(rid)
        return f"restart {rid}"

    def cut_link(self) -> str:
        link = frozenset(self.rng.sample(self.ids, 2))
        self.cut.add(link)
        return f"cut {'-'.join(sorted(link))}"

    def heal(self) -> str:
        self.cut.clear()
        return "heal all links"

    def elect(self) -> str | None:
        """etcd hands the key to one live replica with a new, larger epoch (the old holder's
        lease ran out; it may or may not have noticed)."""
        rid = self._candidate()
        if rid is None:
            return None
        holder = self.replicas[self.holder] if self.holder in self.running() else None
        if (
            holder is not None
            and holder.role is not Role.FOLLOWER
            and self.rng.random() > self.steal
        ):
            return None  # the holder keeps its lease: etcd gives the key to nobody else
        if holder is not None and self.rng.random() < self.notice:
            self.replicas[self.holder].on_lease_lost()
        self.epoch += 1
        self.holder = rid
        self.apply(rid, self.replicas[rid].on_elected(self.epoch))
        return f"elect {rid} epoch {self.epoch}"

    def running(self) -> set[str]:
        return self.up - self.frozen

    def freeze(self) -> str | None:
        """SIGSTOP: mostly the key's holder (a leader frozen past its lease), else any."""
        running = self.running()
        if self.holder in running and self.rng.random() < 0.7:
            rid = self.holder
        else:
            rid = self.pick(running)
        if rid is None:
            return None
        self.frozen.add(rid)
        return f"freeze {rid}"

    def thaw(self) -> str | None:
        """SIGCONT. A replica whose epoch etcd has moved past notices its lease deadline first
        (or, at the schedule's rate of not noticing, goes on as it was)."""
        rid = self.pick(self.frozen)
        if rid is None:
            return None
        self.frozen.discard(rid)
        replica = self.replicas[rid]
        if replica.epoch < self.epoch and self.rng.random() < self.notice:
            replica.on_lease_lost()
        return f"thaw {rid}"

    def _candidate(self) -> str | None:
        """Mostly the live replica with the longest log (the wiring lets a replica that knows it
        is behind back off); sometimes any, so the position check is exercised."""
        running = self.running()
        if not running:
            return None
        if self.rng.random() < self.any_candidate:
            return self.pick(running)
        best = max(self.replicas[rid].last_position() for rid in running)
        return self.pick({rid for rid in running if self.replicas[rid].last_position() == best})

    def lease_runs_out(self) -> str | None:
        if self.holder not in self.running():
            return None
        self.replicas[self.holder].on_lease_lost()
        return f"lease lost {self.holder}"

    def compact(self) -> str | None:
        rid = self.pick(self.running())
        if rid is None:
            return None
        store = self.stores[rid]
        upto = min(self.replicas[rid].commit_offset, store.durable_end() - 1)
        if upto < store.start():
            return None
        store.compact(upto)
        return f"compact {rid} up to {upto}"

    # --- the checker ---

    def acknowledge(self, rid: str, committed: Committed) -> None:
        holder = self.acknowledger.setdefault(committed.epoch, rid)
        if holder != rid:
            raise Violation(f"{holder} and {rid} both acknowledged in epoch {committed.epoch}")
        records = self.stores[rid].records()[: committed.offset + 1]
        known = len(self.acked)
        if records[:known] != self.acked[: len(records)]:
            offset = _first_difference(records, self.acked)
            raise Violation(
                f"{rid} (epoch {committed.epoch}) acknowledged up to {committed.offset} an entry "
                f"other than the one acknowledged before at {offset}"
            )
        self.acked.extend(records[known:])
        upto = self.acked_upto.get(committed.epoch, -1)
        self.acked_upto[committed.epoch] = max(upto, committed.offset)

    def check(self) -> None:
        acked = self.acked
        count = len(acked)
        holding = [rid for rid in self.ids if self.stores[rid].durable_records()[:count] == acked]
        if len(holding) < self.majority:
            agree = sorted(
                (_first_difference(self.stores[rid].durable_records(), acked) for rid in self.ids),
                reverse=True,
            )
            raise Violation(
                f"acknowledged entry lost: offset {agree[self.majority - 1]} (of 0..{count - 1}) "
                f"is durable on fewer than {self.majority} of {len(self.ids)} replicas"
            )
        for rid in self.up:
            replica = self.replicas[rid]
            records = self.stores[rid].records()
            committed = replica.commit_offset + 1
            if committed > count or records[:committed] != acked[:committed]:
                raise Violation(
                    f"{rid} holds as committed 0..{committed - 1} what was not acknowledged, "
                    f"from offset {_first_difference(records[:committed], acked)}"
                )
            if replica.is_leader():
                upto = max(
                    (o for e, o in self.acked_upto.items() if e <= replica.epoch), default=-1
                )
                if records[: upto + 1] != acked[: upto + 1]:
                    raise Violation(
                        f"{rid}, leader of epoch {replica.epoch}, lacks the acknowledged entry "
                        f"at offset {_first_difference(records, acked[: upto + 1])}"
                    )


def _first_difference(records: list[Record], acked: list[Record]) -> int:
    """The first offset where `records` does not hold what was acknowledged."""
    for offset, record in enumerate(acked):
        if offset >= len(records) or records[offset] != record:
            return offset
    return len(acked)


@dataclass(frozen=True, slots=True)
class Failure:
    seed: int
    violation: str

    def replay_command(self, config: SimConfig) -> str:
        options = f" --steps {config.steps}"
        options += f" --replicas {config.replicas}" if config.replicas else ""
        options += f" --max-batch {config.max_batch}" if config.max_batch else ""
        options += f" --broken {config.broken}" if config.broken else ""
        return f".venv/bin/python -m tests.replsim --seed {self.seed}{options} --trace"


def run_schedules(
    first_seed: int,
    count: int,
    config: SimConfig,
    make_stores: Callable[[int], Callable[[str], Any]] | None = None,
) -> Failure | None:
    """Run seeds first_seed .. first_seed+count-1; the first failure, or None.
    make_stores(seed): the store factory of that seed's simulation (default: MemoryStore)."""
    for seed in range(first_seed, first_seed + count):
        simulation = (
            Simulation(seed, config)
            if make_stores is None
            else Simulation(seed, config, make_store=make_stores(seed))
        )
        try:
            simulation.run()
        except Violation as violation:
            return Failure(seed, str(violation))
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, help="replay exactly this seed")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--replicas", type=int, choices=(3, 5), help="default: drawn per seed")
    parser.add_argument("--max-batch", type=int, help="entries per batch; default: drawn 1..4")
    parser.add_argument("--broken", choices=sorted(BROKEN))
    parser.add_argument("--trace", action="store_true", help="print every step")
    args = parser.parse_args(argv)
    config = SimConfig(args.steps, args.broken, args.replicas, args.max_batch)
    if args.seed is not None:
        try:
            Simulation(args.seed, config, trace=args.trace).run()
        except Violation as violation:
            print(f"seed {args.seed}: VIOLATION: {violation}")
            return 1
        print(f"seed {args.seed}: ok")
        return 0
    started = time.monotonic()
    failure = run_schedules(args.first_seed, args.schedules, config)
    elapsed = time.monotonic() - started
    if failure:
        print(f"seed {failure.seed}: VIOLATION: {failure.violation}")
        print(f"replay: {failure.replay_command(config)}")
        return 1
    last_seed = args.first_seed + args.schedules - 1
    print(
        f"{args.schedules} schedules (seeds {args.first_seed}..{last_seed}, "
        f"{config.steps} steps each) passed in {elapsed:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
