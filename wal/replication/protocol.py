"""The replication protocol core: pure, deterministic, no sockets, no clock, no disk.

A `Replica` is driven by events (a message arrived, the log's fsync finished, a retransmit tick,
etcd elected us, our lease deadline passed, a client append) and answers each with a list of
actions (send this message, fsync the log, appends up to here are committed, give up the leader
key). The log it replicates is a `LogStore`: the real `wal.Log` will implement it; the simulation
has an in-memory one. The rules are Raft's (docs/REPLICATION.md has the argument):

- A leader of epoch E ships batches (E, prev_offset, prev_epoch, entries, commit_offset).
- A follower refuses anything from an epoch older than the newest it has seen (stored durably),
  checks log matching at (prev_offset, prev_epoch), cuts a suffix the leader does not have,
  appends, and reports its durable offset after its own fsync.
- The leader's commit offset is the largest offset durable on a majority (itself included) whose
  entry is of the leader's own epoch; its first act is to append a record of its epoch.
- Winning the etcd key is not enough to lead: the winner asks every replica for its log's
  (last epoch, last offset); each that answers adopts the new epoch first. The winner serves only
  once a majority (itself included) answered and none of them is ahead of it; if one is ahead it
  resigns the key.
- A follower behind the leader's first offset gets the leader's snapshot, then the log after it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in a log, compared as Raft compares logs: epoch first, then offset."""

    epoch: int
    offset: int


EMPTY = Position(0, -1)  # the position of an empty log


@dataclass(frozen=True, slots=True)
class Entry:
    """One log record. `payload` None is a leader's first record of its epoch (no client data)."""

    offset: int
    epoch: int
    payload: bytes | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state of every entry up to `last` (inclusive); `state` is opaque to the protocol."""

    last: Position
    state: Any


# --- messages (every message names its sender and the sender's newest epoch) ---


@dataclass(frozen=True, slots=True)
class PositionRequest:
    """A candidate that won epoch `epoch` in etcd asks for the receiver's log position."""

    epoch: int
    sender: str


@dataclass(frozen=True, slots=True)
class PositionReply:
    """The receiver's last (epoch, offset), sent after adopting the request's epoch."""

    epoch: int
    sender: str
    last: Position


@dataclass(frozen=True, slots=True)
class AppendBatch:
    """Entries after `prev_offset` (whose entry has epoch `prev_epoch`), from the leader of
    `epoch`; `commit_offset` is the leader's."""

    epoch: int
    sender: str
    prev_offset: int
    prev_epoch: int
    entries: tuple[Entry, ...]
    commit_offset: int


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """The leader's snapshot, for a follower that needs entries the leader no longer holds."""

    epoch: int
    sender: str
    snapshot: Snapshot
    commit_offset: int


@dataclass(frozen=True, slots=True)
class AppendReply:
    """A follower's answer. ok: its log matches the leader's up to `durable_offset`, durably.
    Not ok: the batch did not match; `last_offset` is where the leader should look next."""

    epoch: int
    sender: str
    ok: bool
    durable_offset: int
    last_offset: int


Message = PositionRequest | PositionReply | AppendBatch | InstallSnapshot | AppendReply


# --- actions ---


@dataclass(frozen=True, slots=True)
class Send:
    to: str
    message: Message


@dataclass(frozen=True, slots=True)
class SyncLog:
    """fsync what was appended to the log, then call `Replica.on_synced`."""


@dataclass(frozen=True, slots=True)
class Committed:
    """The leader of `epoch` may acknowledge every append up to `offset`: it is on a majority."""

    epoch: int
    offset: int


@dataclass(frozen=True, slots=True)
class Resign:
    """Give up the etcd leader key of `epoch`: a replica with a longer log exists."""

    epoch: int


Action = Send | SyncLog | Committed | Resign


class LogStore(Protocol):
    """The log a replica replicates. Offsets are dense from 0; below `start()` is the snapshot."""

    def current_epoch(self) -> int:
        """The newest epoch this replica has seen (0 at first)."""

    def set_current_epoch(self, epoch: int) -> None:
        """Record the newest epoch seen; durable when this returns."""

    def start(self) -> int:
        """The first offset held as an entry; those below are in `snapshot()`."""

    def end(self) -> int:
        """One past the last offset held (synced or not)."""

    def epoch_at(self, offset: int) -> int:
        """The epoch of the entry at `offset`, for start()-1 <= offset < end(); at start()-1
        the snapshot's last epoch, and 0 at offset -1."""

    def read(self, offset: int, limit: int) -> list[Entry]:
        """Up to `limit` entries from `offset` (start() <= offset <= end())."""

    def append(self, entries: Sequence[Entry]) -> None:
        """Add entries at end(); durable only after the next fsync (`SyncLog`)."""

    def truncate(self, offset: int) -> None:
        """Remove every entry from `offset` on; durable when this returns."""

    def durable_end(self) -> int:
        """One past the last entry that is on disk (fsynced)."""

    def snapshot(self) -> Snapshot | None:
        """The newest snapshot (None when start() is 0)."""

    def install_snapshot(self, snapshot: Snapshot) -> None:
        """Replace every entry up to snapshot.last by the snapshot; keep the entries after it if
        the entry at snapshot.last has snapshot.last's epoch, else drop them all. Durable when
        this returns."""


class NotLeaderError(Exception):
    """An append reached a replica that is not the serving leader."""


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"  # won the etcd key, asking replicas for their positions
    LEADER = "leader"


@dataclass(slots=True)
class PeerProgress:
    """The leader's view of one follower."""

    next_offset: int  # the next entry to send
    durable_offset: int = -1  # the follower's log matches ours, durably, up to here


class Replica:
    """One replica's protocol state. `replicas` are all replica ids of the cluster, self too."""

    def __init__(
        self,
        replica_id: str,
        replicas: Sequence[str],
        store: LogStore,
        max_batch: int = 64,
        acks_all: bool = False,
    ) -> None:
        self.id = replica_id
        self.peers = [other for other in replicas if other != replica_id]
        self.majority = len(replicas) // 2 + 1
        # --acks all: commit only what every replica has (the position check stays a majority's)
        self.quorum = len(replicas) if acks_all else self.majority
        self.store = store
        self.max_batch = max_batch
        self.epoch = store.current_epoch()
        self.role = Role.FOLLOWER
        self.leader_id: str | None = None
        self.commit_offset = store.start() - 1  # a snapshot holds committed entries only
        self.matched_offset = -1  # follower: our log equals the current leader's up to here
        self.positions: dict[str, Position] = {}  # candidate: the answers so far
        self.progress: dict[str, PeerProgress] = {}  # leader: per follower
        self._handlers: dict[type, Callable[[Any], list[Action]]] = {
            PositionRequest: self._on_position_request,
            PositionReply: self._on_position_reply,
            AppendBatch: self._on_append_batch,
            InstallSnapshot: self._on_install_snapshot,
            AppendReply: self._on_append_reply,
        }

    # --- queries ---

    def last_position(self) -> Position:
        last = self.store.end() - 1
        return Position(self.store.epoch_at(last), last)

    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    # --- events ---

    def on_elected(self, epoch: int) -> list[Action]:
        """etcd gave this replica the leader key with `epoch`: start the position check."""
        if epoch <= self.epoch:  # cannot happen with etcd's revisions; never lead an old epoch
            return [Resign(epoch)]
        self._adopt(epoch)
        self.role = Role.CANDIDATE
        self.positions = {self.id: self.last_position()}
        actions: list[Action] = [Send(peer, PositionRequest(epoch, self.id)) for peer in self.peers]
        return actions + self._tally()

    def on_message(self, message: Message) -> list[Action]:
        return self._handlers[type(message)](message)

    def on_synced(self) -> list[Action]:
        """The log's fsync finished: count our own durable offset, or report it to the leader."""
        if self.role is Role.LEADER:
            return self._advance_commit()
        return self._durable_reply()

    def on_tick(self) -> list[Action]:
        """Retransmit: a leader resends from each follower's durable offset (carrying its commit
        offset), a candidate asks again those that have not answered."""
        if self.role is Role.CANDIDATE:
            return [
                Send(peer, PositionRequest(self.epoch, self.id))
                for peer in self.peers
                if peer not in self.positions
            ]
        if self.role is not Role.LEADER:
            return []
        actions: list[Action] = []
        for peer, progress in self.progress.items():
            progress.next_offset = progress.durable_offset + 1
            actions.append(self._batch_for(peer))
        return actions

    def on_lease_lost(self) -> list[Action]:
        """Our lease deadline passed: stop leading (and acknowledging) now."""
        if self.role is not Role.FOLLOWER:
            self._become_follower(None)
        return []

    def append(self, payload: bytes) -> tuple[int, list[Action]]:
        """A client append at the leader: its offset and the actions (fsync, ship)."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(f"replica {self.id} is not the leader (epoch {self.epoch})")
        offset = self.store.end()
        self.store.append([Entry(offset, self.epoch, payload)])
        return offset, [SyncLog(), *self._ship()]

    def append_batch(self, payloads: Sequence[bytes]) -> tuple[int, list[Action]]:
        """A group commit's appends at the leader, as one batch: the first one's offset (the
        rest follow densely) and the actions (one fsync; everything shipped, pipelined)."""
        if self.role is not Role.LEADER:
            raise NotLeaderError(f"replica {self.id} is not the leader (epoch {self.epoch})")
        first = self.store.end()
        epoch = self.epoch
        self.store.append([Entry(first + i, epoch, p) for i, p in enumerate(payloads)])
        actions: list[Action] = [SyncLog()]
        end = self.store.end()
        for peer, progress in self.progress.items():
            if progress.next_offset < first:
                continue  # behind (away, or catching up): its replies and the tick move it on
            while progress.next_offset < end:  # at most max_batch entries a batch
                actions.append(self._batch_for(peer))
        return first, actions

    # --- the rules a broken variant may override (the simulation checks they matter) ---

    def _commit_quorum(self) -> int:
        return self.quorum

    def _may_commit(self, offset: int) -> bool:
        """Raft 5.4.2: count replicas only for an entry of the leader's own epoch."""
        return self.store.epoch_at(offset) == self.epoch

    def _epoch_start(self) -> list[Entry]:
        """The leader's first record of its epoch; committing it commits all before it."""
        return [Entry(self.store.end(), self.epoch, None)]

    def _up_to_date(self) -> bool:
        """No replica that answered has a log ahead of ours."""
        mine = self.positions[self.id]
        return all(position <= mine for position in self.positions.values())

    # --- internals ---

    def _adopt(self, epoch: int) -> None:
        """A newer epoch: record it durably; whatever we led or asked for is over."""
        self.store.set_current_epoch(epoch)
        self.epoch = epoch
        self._become_follower(None)

    def _become_follower(self, leader_id: str | None) -> None:
        if leader_id != self.leader_id or self.role is not Role.FOLLOWER:
            self.matched_offset = -1  # nothing is known to match a new leader's log yet
        self.role = Role.FOLLOWER
        self.leader_id = leader_id
        self.positions = {}
        self.progress = {}

    def _stale(self, epoch: int) -> bool:
        """True if a message of `epoch` is from the past; adopts a newer epoch."""
        if epoch < self.epoch:
            return True
        if epoch > self.epoch:
            self._adopt(epoch)
        return False

    def _on_position_request(self, request: PositionRequest) -> list[Action]:
        self._stale(request.epoch)  # an old candidate learns the newer epoch from the reply
        return [Send(request.sender, PositionReply(self.epoch, self.id, self.last_position()))]

    def _on_position_reply(self, reply: PositionReply) -> list[Action]:
        if reply.epoch > self.epoch:  # a newer epoch exists: ours is over
            was_candidate, epoch = self.role is Role.CANDIDATE, self.epoch
            self._adopt(reply.epoch)
            return [Resign(epoch)] if was_candidate else []
        if reply.epoch < self.epoch or self.role is not Role.CANDIDATE:
            return []
        self.positions[reply.sender] = reply.last
        return self._tally()

    def _tally(self) -> list[Action]:
        if not self._up_to_date():
            self._become_follower(None)
            return [Resign(self.epoch)]
        if len(self.positions) < self.majority:
            return []
        return self._become_leader()

    def _become_leader(self) -> list[Action]:
        self.role = Role.LEADER
        self.leader_id = self.id
        self.positions = {}
        end = self.store.end()
        self.progress = {peer: PeerProgress(next_offset=end) for peer in self.peers}
        self.store.append(self._epoch_start())
        return [SyncLog(), *self._ship()]

    def _ship(self) -> list[Action]:
        """Send each follower what it has not been sent yet."""
        end = self.store.end()
        return [
            self._batch_for(peer)
            for peer, progress in self.progress.items()
            if progress.next_offset < end
        ]

    def _batch_for(self, peer: str) -> Send:
        progress = self.progress[peer]
        start = self.store.start()
        if progress.next_offset < start:  # compacted away here: the snapshot first
            snapshot = self.store.snapshot()
            assert snapshot is not None  # the store starts past 0 only below a snapshot
            progress.next_offset = start
            return Send(peer, InstallSnapshot(self.epoch, self.id, snapshot, self.commit_offset))
        prev = progress.next_offset - 1
        entries = tuple(self.store.read(progress.next_offset, self.max_batch))
        progress.next_offset += len(entries)  # pipelined: the next batch follows at once
        batch = AppendBatch(
            self.epoch, self.id, prev, self.store.epoch_at(prev), entries, self.commit_offset
        )
        return Send(peer, batch)

    def _advance_commit(self) -> list[Action]:
        durable = [self.store.durable_end() - 1]
        durable += [progress.durable_offset for progress in self.progress.values()]
        durable.sort(reverse=True)
        candidate = durable[self._commit_quorum() - 1]
        if candidate <= self.commit_offset or not self._may_commit(candidate):
            return []
        self.commit_offset = candidate
        return [Committed(self.epoch, candidate)]

    def _on_append_reply(self, reply: AppendReply) -> list[Action]:
        if self._stale(reply.epoch) or self.role is not Role.LEADER or reply.epoch != self.epoch:
            return []
        progress = self.progress[reply.sender]
        if reply.ok:
            progress.durable_offset = max(progress.durable_offset, reply.durable_offset)
            progress.next_offset = max(progress.next_offset, progress.durable_offset + 1)
            return self._advance_commit() + self._ship()
        # Back off to just past the follower's log (never past ours, nor below what it holds).
        resume = min(self.store.end(), reply.last_offset + 1)
        progress.next_offset = max(progress.durable_offset + 1, resume)
        return [self._batch_for(reply.sender)]

    def _refuse(self, to: str, last_offset: int) -> list[Action]:
        return [Send(to, AppendReply(self.epoch, self.id, False, -1, last_offset))]

    def _follow(self, epoch: int, leader_id: str) -> bool:
        """Accept `leader_id` as the leader of `epoch`; False if that epoch is old."""
        if self._stale(epoch):
            return False
        if self.role is not Role.FOLLOWER or self.leader_id != leader_id:
            self._become_follower(leader_id)
        return True

    def _on_append_batch(self, batch: AppendBatch) -> list[Action]:
        if not self._follow(batch.epoch, batch.sender):
            return self._refuse(batch.sender, self.store.end() - 1)
        store = self.store
        prev = batch.prev_offset
        if prev >= store.end():
            return self._refuse(batch.sender, store.end() - 1)
        # Below our snapshot everything is committed, so it matches any leader's log.
        if prev >= store.start() - 1 and store.epoch_at(prev) != batch.prev_epoch:
            return self._refuse(batch.sender, prev - 1)
        appended = self._merge(batch.entries)
        self.matched_offset = max(self.matched_offset, prev + len(batch.entries))
        self._learn_commit(batch.commit_offset)
        return [SyncLog()] if appended else self._durable_reply()

    def _merge(self, entries: Sequence[Entry]) -> bool:
        """Append what we lack, cutting our suffix at the first entry that conflicts."""
        store = self.store
        for index, entry in enumerate(entries):
            if entry.offset < store.start():
                continue
            if entry.offset < store.end():
                if store.epoch_at(entry.offset) == entry.epoch:
                    continue
                store.truncate(entry.offset)
                self.matched_offset = min(self.matched_offset, entry.offset - 1)
            store.append(entries[index:])
            return True
        return False

    def _on_install_snapshot(self, message: InstallSnapshot) -> list[Action]:
        if not self._follow(message.epoch, message.sender):
            return self._refuse(message.sender, self.store.end() - 1)
        last = message.snapshot.last.offset
        if last >= self.store.start() and last > self.commit_offset:
            self.store.install_snapshot(message.snapshot)
            self.commit_offset = max(self.commit_offset, last)
        self.matched_offset = max(self.matched_offset, last)
        self._learn_commit(message.commit_offset)
        return self._durable_reply()

    def _learn_commit(self, leader_commit: int) -> None:
        self.commit_offset = max(self.commit_offset, min(leader_commit, self.matched_offset))

    def _durable_reply(self) -> list[Action]:
        if self.leader_id is None or self.role is not Role.FOLLOWER:
            return []
        durable = min(self.store.durable_end() - 1, self.matched_offset)
        reply = AppendReply(self.epoch, self.id, True, durable, self.store.end() - 1)
        return [Send(self.leader_id, reply)]
