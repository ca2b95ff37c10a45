"""The compactor: keeps the state machine, writes snapshots, releases the log.

It is the only process that writes snapshots. It also runs
`fsync_benchmark`, so that measuring never stalls the writer. It reads the log files
read-only (the writer tells it how far they are written) and folds entries
into the state machine in offset order. A snapshot is written to a temp
file, fsynced, renamed into place and the directory fsynced before anyone
hears of it; only then may the writer drop the entries below it.

At start: load the newest snapshot that passes its checks (falling back to
older ones), then replay the log from there. Automatic retention keeps the
log back to the oldest snapshot kept, so that falling back always works.

An entry whose record cannot be read is not applied, and not skipped in
silence either: the state machine records its offset (and a snapshot
carries it), and kv_get answers error 22 naming it for every key that a
readable entry has not set or deleted since. If the log cannot be followed
past some byte at all (a damaged length field in the newest segment), the
state stops there and kv_get says so for every key.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from actors import messages as m
from actors import metrics, sockets
from actors.codes import Code, Exit
from actors.config import CompactorConfig, add_process_flags
from actors.runtime import die_with_parent, ignore_stop_signals, setup_logging
from wal import CorruptionError, DiskFull, WalError, epochs, fsyncbench, snapshot
from wal.datadir import DataDir
from wal.log import read_start_offset
from wal.statemachine import StateMachine
from wal.statestore import Mark, StateStore, StoreDamaged
from wal.tail import LogTail

log = setup_logging("compactor")

AUTO_RETRY_DELAY = 5.0  # seconds between tries of a failing automatic snapshot
STOP_SYNC_WAIT_S = 1.0  # at a stop, how long the writer's durable offset is waited for
MAX_NAMED = 20  # damaged offsets named in one reply (the newest ones)
# The state store's commits: every COMMIT_INTERVAL_S, or once COMMIT_KEYS keys changed (a
# kill -9 then replays at most about that much of the log); at most every
# REPLAY_COMMIT_ENTRIES entries of a long replay at start.
COMMIT_INTERVAL_S = 2.0  # a commit of 10,000 keys costs ~18 ms of CPU here (BENCHMARKS.md)
COMMIT_KEYS = 100_000
REPLAY_COMMIT_ENTRIES = 1_000_000


class Compactor:
    def __init__(
        self,
        datadir: DataDir,
        *,
        snapshot_every: int,
        snapshot_every_bytes: int,
        keep_entries: int,
        keep_snapshots: int,
        auto: bool,
    ) -> None:
        self.datadir = datadir
        self.snapshot_every = snapshot_every
        self.snapshot_every_bytes = snapshot_every_bytes
        self.keep_entries = keep_entries
        self.keep_snapshots = keep_snapshots
        self.auto = auto
        self.sm = StateMachine()
        self.store: StateStore | None = None  # opened by recovery
        self.committed_at = 0.0  # monotonic time of the store's last commit
        self.commit_retry_at = 0.0  # after a failed commit, wait before the next
        self.tail: LogTail | None = None
        self.snapshot_offset: int | None = None  # the newest durable snapshot
        self.durable_next = 0  # from the writer's notices
        self.bytes_since_snapshot = 0
        self._bytes_mark: int | None = None
        self.auto_busy = False
        self.auto_retry_at = 0.0  # after a failed automatic snapshot, wait before the next
        self.metrics = metrics.for_compactor()  # None without --metrics-listen
        self.stuck: str | None = None  # why the log cannot be followed past applied_offset
        # a cluster's replica: kv_get only before this monotonic time (its lease deadline);
        # None: no cluster, always (main sets 0.0 under --cluster: never, until a notice)
        self.serving_until: float | None = None

    # -- recovery ----------------------------------------------------------

    def recover(self, durable_next: int) -> dict:
        """Open the state store and replay the log after its offset, up to
        `durable_next`; a store missing, damaged or not matching the log is
        rebuilt from the newest valid snapshot (and the log after it)."""
        t0 = time.monotonic()
        for name in snapshot.remove_temp_files(self.datadir.snapshot_dir):
            log.info("removed %s, left by a snapshot that was never completed", name)
        if self.tail is not None:
            self.tail.close()
        if self.store is not None:
            self.store.close()
        store, rebuilt = self.open_store()
        skipped: list[str] = []
        if rebuilt is None:
            self.snapshot_offset, skipped = snapshot.newest_offset(self.datadir.snapshot_dir)
        else:
            log.warning("rebuilding the state store: %s", rebuilt)
            self.snapshot_offset, skipped = self.load_snapshot(store)
        for note in skipped:
            log.warning("%s", note)
        start = store.mark.offset
        self.store = store
        self.sm = StateMachine(applied_offset=start, damaged=tuple(store.damaged), store=store)
        self.tail = LogTail(self.datadir.wal_dir, start)
        self.durable_next = durable_next
        # a long replay (the store's first build) is committed as it goes, not held whole
        for stop in range(start + REPLAY_COMMIT_ENTRIES, durable_next, REPLAY_COMMIT_ENTRIES):
            self.catch_up(stop)
            self.commit_store()
        self.catch_up(durable_next)
        if self.sm.applied_offset - start > REPLAY_COMMIT_ENTRIES:
            self.commit_store()  # a long replay is durable before ready, not a kill later
        self.committed_at = time.monotonic()
        return {
            "snapshot_offset": self.snapshot_offset,
            "snapshots_skipped": len(skipped),
            "store_offset": start,
            "store_rebuilt": rebuilt,
            "damaged_offsets": self.sm.damaged[-MAX_NAMED:],
            "entries_recovered": self.sm.applied_offset - start,
            "bytes_truncated": 0,
            "first_offset": start,
            "next_offset": self.sm.applied_offset,
            "duration_ms": round((time.monotonic() - t0) * 1000, 3),
        }

    def open_store(self) -> tuple[StateStore, str | None]:
        """The state store if it can be opened and matches the log, else an
        empty new one; and why it was not kept (None: kept)."""
        state_dir = self.datadir.state_dir
        try:
            store = StateStore.open(state_dir)
        except StoreDamaged as err:
            why = str(err)
        else:
            if store.created:
                return store, f"there was none in {state_dir} (a first start, or it was removed)"
            mismatch = self.mark_mismatch(store.mark)
            if mismatch is None:
                return store, None
            store.close()
            why = f"it stands at offset {store.mark.offset}, and {mismatch}"
        StateStore.remove(state_dir)
        return StateStore.open(state_dir), why

    def mark_mismatch(self, mark: Mark) -> str | None:
        """Why the log does not hold the position a store stands on (None: it
        does): its entry at mark.offset - 1 must be there with the payload
        CRC and the epoch the store recorded, or the log must start at
        mark.offset exactly (compacted there, or a replica's installed snapshot)."""
        wal_dir = self.datadir.wal_dir
        bases = self.datadir.segment_bases()
        start = read_start_offset(wal_dir)
        first = start if start is not None else (bases[0] if bases else 0)
        if mark.offset < first:
            return f"the log starts at offset {first}, after it"
        if mark.offset == first:
            return None
        tail = LogTail(wal_dir, mark.offset - 1)
        try:
            payloads = [p for run, _ in tail.read_runs(mark.offset) for p in run]
        except WalError as err:
            return f"the log has no entry {mark.offset - 1} ({err})"
        finally:
            tail.close()
        crc = None if payloads[0] is None else zlib.crc32(payloads[0])
        epoch = epochs.snapshot_epoch(wal_dir, mark.offset - 1)
        if (crc, epoch) != (mark.crc, mark.epoch):
            return (
                f"the log's entry {mark.offset - 1} is not the one it applied (payload CRC "
                f"{crc}, epoch {epoch}; it recorded {mark.crc}, {mark.epoch}): the log was "
                f"cut or replaced under it"
            )
        return None

    def load_snapshot(self, store: StateStore) -> tuple[int | None, list[str]]:
        """Load the newest valid snapshot into an empty store (its Mark taken
        from the log's entry before it); its offset and the files skipped."""
        snap, skipped = snapshot.load_latest(self.datadir.snapshot_dir)
        if snap is None:
            return None, skipped
        crc = None
        if snap.offset > 0:
            tail = LogTail(self.datadir.wal_dir, snap.offset - 1)
            try:
                last = [p for run, _ in tail.read_runs(snap.offset) for p in run][0]
                crc = None if last is None else zlib.crc32(last)
            except WalError:
                pass  # the log starts at the snapshot: its first offset is the Mark
            finally:
                tail.close()
        mark = Mark(snap.offset, crc, snap.epoch)
        damage = snap.damage
        store.replace(snap.state.items(), damage.damaged, damage.rewritten, mark)
        return snap.offset, skipped

    def commit_store(self) -> bool:
        """Commit what changed since the last commit (one transaction, with the
        offset reached). Only entries known durable (committed, in a cluster)
        are ever committed: a store never holds what the log could lose."""
        self.catch_up(self.durable_next)  # applied lazily otherwise: a kill would replay it all
        sm, store = self.sm, self.store
        if store is None or sm.applied_offset > self.durable_next:
            return False
        if sm.applied_offset == store.mark.offset:
            return True
        last = sm.applied_offset - 1
        store.commit(sm.changes(epochs.snapshot_epoch(self.datadir.wal_dir, last)))
        sm.committed()
        self.committed_at = time.monotonic()
        return True

    def commit_due(self, now: float) -> bool:
        if now < self.commit_retry_at:
            return False
        return len(self.sm.state) >= COMMIT_KEYS or now >= self.committed_at + COMMIT_INTERVAL_S

    def rebuild_store(self, err: WalError) -> None:
        """The store failed as damaged: rebuild it (from a snapshot and the log)."""
        log.error("%s: rebuilding it from the newest snapshot and the log", err)
        if self.store is not None:
            self.store.close()
            self.store = None
        StateStore.remove(self.datadir.state_dir)
        self.stuck = None
        self.recover(self.durable_next)

    # -- applying ------------------------------------------------------------

    def catch_up(self, until: int) -> None:
        """Apply entries up to `until` (exclusive); they are written already."""
        if until <= self.sm.applied_offset or self.stuck is not None:
            return
        tail = self.tail
        assert tail is not None  # opened by recovery, before anything is applied
        try:
            # a run at a time (a sealed segment's chunk): one tight loop, not a step per entry
            for payloads, damaged in tail.read_runs(until):
                for i, path, byte in damaged:
                    log.error(
                        "entry %d cannot be read (%s at byte %d: a failed checksum or a lost "
                        "record): not applied; kv_get names it for the keys it could have changed",
                        self.sm.applied_offset + i,
                        path,
                        byte,
                    )
                self.sm.apply_run(payloads)
        except CorruptionError as err:
            self.stuck = str(err)
            log.error("the state stops before entry %d: %s", self.sm.applied_offset, err)

    def on_notice(
        self,
        durable_next: int,
        bytes_appended: int,
        serving_until: float | None = None,
        first_offset: int = 0,
    ) -> None:
        """A replica's notices (actors/replica.py) say up to where entries are committed,
        until when (monotonic, this host's clock) it leads within its lease, and where its log
        starts: past what we applied only when it installed the leader's snapshot (our own
        compactions stay below our snapshots), so the state is rebuilt from that snapshot."""
        self.durable_next = max(self.durable_next, durable_next)
        self.serving_until = serving_until
        if first_offset > self.sm.applied_offset:
            log.info("the log now starts at %d (a snapshot was installed): reloading", first_offset)
            self.stuck = None
            if self.tail is not None:
                self.tail.close()
            self.recover(self.durable_next)
        if self._bytes_mark is None or bytes_appended < self._bytes_mark:
            self._bytes_mark = bytes_appended  # a new writer counts from 0 again
        self.bytes_since_snapshot += bytes_appended - self._bytes_mark
        self._bytes_mark = bytes_appended

    def auto_due(self) -> bool:
        if not self.auto or self.auto_busy or self.sm.applied_offset > self.durable_next:
            return False
        if self.stuck is not None:
            return False  # the state cannot advance: a snapshot would cover nothing new
        if time.monotonic() < self.auto_retry_at:
            return False
        since = self.durable_next - (self.snapshot_offset or 0)
        return since >= self.snapshot_every or (
            since > 0 and self.bytes_since_snapshot >= self.snapshot_every_bytes
        )

    # -- requests ------------------------------------------------------------

    def kv_get(self, key: str, min_offset: int) -> tuple[int, dict]:
        if self.serving_until is not None and time.monotonic() >= self.serving_until:
            return Code.TEMPORARILY_UNAVAILABLE, {
                "text": "this replica is not the cluster's leader within its lease, so its "
                "state may be stale: ask the leader (docs/REPLICATION.md)"
            }
        self.catch_up(min_offset)
        try:
            refusal = self.damaged_refusal(key, min_offset)
            value = self.sm.get(key)
        except StoreDamaged as err:
            self.rebuild_store(err)
            self.catch_up(min_offset)
            refusal = self.damaged_refusal(key, min_offset)
            value = self.sm.get(key)
        if refusal is not None:
            return Code.PRECONDITION_FAILED, refusal
        if value is None:
            return Code.KEY_DOES_NOT_EXIST, {
                "text": f"key {key!r} does not exist (as of offset {self.sm.applied_offset})",
                "applied_offset": self.sm.applied_offset,
            }
        return m.OK, {"key": key, "value": value, "applied_offset": self.sm.applied_offset}

    def damaged_refusal(self, key: str, min_offset: int) -> dict | None:
        """Why `key`'s value cannot be told, or None: the fields of error 22."""
        applied = self.sm.applied_offset
        if self.stuck is not None and min_offset > applied:
            return {
                "text": f"the state stops before entry {applied}: {self.stuck}; no key can be "
                f"read past it until the log is repaired",
                "damaged_offsets": [applied],
                "applied_offset": applied,
            }
        damaged = self.sm.uncertain(key)
        if not damaged:
            return None
        named = damaged[-MAX_NAMED:]
        return {
            "text": f"the value of key {key!r} may depend on entry {damaged[-1]}, whose record "
            f"cannot be read (it failed its checksum, or walctl repair marked it lost), and "
            f"{key!r} was not set or deleted after it; damaged entries: {named}. Set the "
            f"key again to make it certain, or restore the entries from a replica",
            "damaged_offsets": named,
            "applied_offset": applied,
        }

    def take_snapshot(self, durable_next: int) -> tuple[int, dict]:
        """Snapshot every entry below `durable_next` (all of them fsynced)."""
        self.catch_up(durable_next)
        if self.sm.applied_offset > durable_next:
            # Under a relaxed --fsync the state may hold entries not yet
            # durable; a snapshot of them could outlive the log after power loss.
            return Code.TEMPORARILY_UNAVAILABLE, {
                "text": f"the state holds entries past the durable offset {durable_next}; "
                f"retry (wal_sync first under --fsync never)"
            }
        t0 = time.perf_counter()
        # the snapshot is the store at applied_offset: commit, then read it whole
        self.durable_next = max(self.durable_next, durable_next)  # the barrier's word
        if not self.commit_store():
            raise WalError(f"the state store could not commit up to offset {durable_next}")
        store = self.store
        assert store is not None  # opened by recovery
        damage = snapshot.Damage(tuple(store.damaged), frozenset(store.rewritten_keys()))
        offset = self.sm.applied_offset
        # a replica's snapshot records its last entry's epoch (None on a single node)
        epoch = epochs.snapshot_epoch(self.datadir.wal_dir, offset - 1)
        data = snapshot.encode_packed(offset, snapshot.pack_state(store.chunks()), damage, epoch)
        snap = snapshot.write_encoded(self.datadir.snapshot_dir, offset, data, damage, epoch)
        if self.metrics is not None:
            self.metrics.snapshot_written(time.perf_counter() - t0)
        self.snapshot_offset = max(self.snapshot_offset or 0, snap.offset)
        self.bytes_since_snapshot = 0
        for name in snapshot.prune(self.datadir.snapshot_dir, self.keep_snapshots):
            log.info("pruned snapshot %s", name)
        return m.OK, {"snapshot_offset": snap.offset, "snapshot_size_bytes": snap.size_bytes}

    def retention_target(self, snapshot_offset: int) -> int:
        """Where automatic retention may cut: keep_entries behind the new
        snapshot, and never past the oldest snapshot kept, so that a damaged
        newer one can be fallen back on (its entries are still in the log)."""
        oldest = min(snapshot.list_offsets(self.datadir.snapshot_dir), default=snapshot_offset)
        return max(0, min(snapshot_offset - self.keep_entries, oldest))

    def compact_check(self, offset: int) -> list | None:
        """None if a snapshot covers `offset`, else the refusal (error 22)."""
        if self.snapshot_offset is None or self.snapshot_offset < offset:
            latest = self.snapshot_offset
            where = (
                "there is no snapshot yet"
                if latest is None
                else (f"the latest snapshot is at offset {latest}")
            )
            return [
                Code.PRECONDITION_FAILED,
                {
                    "text": f"no durable snapshot covers offset {offset}: {where}; "
                    f"send wal_snapshot first, then compact at or below its snapshot_offset",
                    "snapshot_offset": latest,
                },
            ]
        return None


@dataclass(slots=True)
class CompactWait:
    """A front's wal_compact, waiting for the writer's truncate_before."""

    router: zmq.Socket
    ident: bytes
    front_rid: int
    offset: int


@dataclass(slots=True)
class AutoWait:
    """Automatic retention's truncate_before, waiting for the writer."""

    target: int


@dataclass(slots=True)
class SyncWait:
    """The stop's wal_info, waiting for the writer's durable offset."""

    durable_offset: int | None = None
    answered: bool = False


class WriterLink:
    """The compactor's requests to the writer and what to do with each answer."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.waiting: dict[int, CompactWait | AutoWait | SyncWait] = {}  # our rid at the writer
        self.next_rid = 0

    def ask(self, op: str, arg: object, then: CompactWait | AutoWait | SyncWait) -> None:
        self.next_rid += 1
        self.waiting[self.next_rid] = then
        self.sock.send(m.pack([m.REQUESTS, [[self.next_rid, op, arg]]]))

    def writer_down(self, comp: Compactor) -> None:
        """What the dead writer held is lost: a compaction may or may not have happened."""
        text = (
            "the writer died during this compaction: it may or may not have happened; "
            "check wal_info.first_offset"
        )
        for then in self.waiting.values():
            if isinstance(then, CompactWait):
                reply = [[then.front_rid, Code.CRASH, {"text": text}]]
                then.router.send_multipart([then.ident, m.pack([m.REPLIES, reply])])
        self.waiting.clear()
        comp.auto_busy = False

    def answered(self, comp: Compactor, data: bytes) -> None:
        for rid, code, fields in m.unpack(data)[1]:
            then = self.waiting.pop(rid, None)
            if isinstance(then, CompactWait):
                if code == m.OK:
                    fields = {"snapshot_offset": then.offset, **fields}
                reply = [[then.front_rid, code, fields]]
                then.router.send_multipart([then.ident, m.pack([m.REPLIES, reply])])
            elif isinstance(then, SyncWait):
                then.answered = True
                if code == m.OK and fields["fsynced"]:  # else only the last notice's is known
                    then.durable_offset = fields["next_offset"]
            elif isinstance(then, AutoWait):
                comp.auto_busy = False
                if code == m.OK:
                    log.info(
                        "auto-compacted toward offset %d (whole segments): "
                        "%d entries kept, %d bytes freed",
                        then.target,
                        fields["entries_after"],
                        fields["bytes_freed"],
                    )
                else:
                    log.warning("auto-compaction refused: %s", fields.get("text"))


# A handler answers [code, fields], or None when the answer comes later.
Handler = Callable[[int, Any, zmq.Socket, bytes], "list | None"]


class Server:
    """The compactor's loop: requests from fronts (and the writer's notices)
    on `routers` (the local ipc one, and a tcp one for remote fronts if any),
    dispatched through an ops table; compactions and barriers go to the
    writer through one WriterLink."""

    def __init__(
        self, comp: Compactor, routers: list[zmq.Socket], writer: zmq.Socket, control: zmq.Socket
    ) -> None:
        self.comp, self.routers, self.control = comp, routers, control
        self.writer = WriterLink(writer)
        self.poller = zmq.Poller()
        for sock in (*routers, writer, control):
            self.poller.register(sock, zmq.POLLIN)
        self.ops: dict[str, Handler] = {
            m.OP_KV_GET: lambda rid, arg, *_: list(self.comp.kv_get(arg[0], arg[1])),
            m.OP_SNAPSHOT: lambda rid, arg, *_: list(self.comp.take_snapshot(arg)),
            m.OP_FSYNC_BENCHMARK: self.fsync_benchmark,
            m.OP_COMPACT: self.compact,
        }

    def run(self) -> None:
        while True:
            events = dict(self.poller.poll(1000))
            if self.control in events and not self.on_control(m.unpack(self.control.recv())):
                self.learn_durable_offset()
                self.snapshot_at_stop()
                return
            for router in self.routers:
                if router in events:
                    for ident, data in sockets.drain(router, multipart=True):
                        self.on_front(router, ident, m.unpack(data))
            if self.writer.sock in events:
                for data in sockets.drain(self.writer.sock):
                    self.writer.answered(self.comp, data)
            if self.comp.auto_due():
                self.auto_snapshot()
            if self.comp.commit_due(time.monotonic()):
                self.commit_store()

    def on_control(self, msg: list) -> bool:
        """The supervisor's word; False to stop."""
        if msg[0] == m.STOP:
            return False
        if msg[0] == m.PING:
            self.control.send(m.pack([m.PONG, os.getpid()]))
        if msg[0] == m.PEER and msg[1] == "writer" and msg[2] == "down":
            self.writer.writer_down(self.comp)
        return True

    def on_front(self, router: zmq.Socket, ident: bytes, msg: list) -> None:
        if msg[0] == m.NOTICE:
            self.comp.on_notice(*msg[1:])
            return
        replies = []
        for rid, op, arg in msg[1]:
            result = self.handle(rid, op, arg, router, ident)
            if result is not None:
                replies.append([rid, *result])
        if replies:
            router.send_multipart([ident, m.pack([m.REPLIES, replies])])

    def handle(self, rid: int, op: str, arg: Any, router: zmq.Socket, ident: bytes) -> list | None:
        handler = self.ops.get(op)
        if handler is None:
            return [Code.NOT_SUPPORTED, {"text": f"the compactor does not serve {op!r}"}]
        try:
            return handler(rid, arg, router, ident)
        except DiskFull as err:
            log.warning("%s failed: %s", op, err)
            text = f"{err}; nothing was changed: free space, then retry"
            return [Code.TEMPORARILY_UNAVAILABLE, {"text": text}]
        except (WalError, OSError) as err:
            log.error("%s failed: %s", op, err)
            return [Code.CRASH, {"text": f"{op} failed in the compactor: {err}"}]

    def fsync_benchmark(self, rid: int, arg: Any, *_: object) -> list:
        # here, not in the writer: measuring must not stall appends
        entries, strategies = arg
        path = self.comp.datadir.path
        return [m.OK, {"results": [fsyncbench.measure(path, entries, s) for s in strategies]}]

    def compact(self, rid: int, arg: Any, router: zmq.Socket, ident: bytes) -> None:
        # Without a covering snapshot the writer still answers an offset at or
        # below its first one (nothing to remove: zeros); above it, it
        # returns our refusal.
        refusal = self.comp.compact_check(arg)
        self.writer.ask(m.OP_TRUNCATE, [arg, refusal, False], CompactWait(router, ident, rid, arg))

    def commit_store(self) -> None:
        """The store's periodic commit. A failure keeps the changes in memory
        (tried again at the next interval); a damaged store is rebuilt."""
        comp = self.comp
        try:
            comp.commit_store()
        except StoreDamaged as err:
            comp.rebuild_store(err)
        except (WalError, OSError) as err:
            comp.commit_retry_at = time.monotonic() + AUTO_RETRY_DELAY
            log.error("the state store's commit failed: %s (retrying later)", err)

    def learn_durable_offset(self) -> None:
        """At a stop, ask the writer how far the log is durable: its last notice
        may be up to NOTICE_INTERVAL_S old, and the stop's snapshot should
        cover every entry. wal_info, not a sync barrier, which would fsync
        what --fsync never leaves unsynced: if its next offset is all
        fsynced, that; otherwise, or without an answer in STOP_SYNC_WAIT_S
        (the writer is down), the last notice's offset."""
        wait = SyncWait()
        self.writer.ask(m.OP_INFO, None, wait)
        deadline = time.monotonic() + STOP_SYNC_WAIT_S
        while not wait.answered:
            left = deadline - time.monotonic()
            if left <= 0 or not self.writer.sock.poll(math.ceil(left * 1000)):
                log.warning("no durable offset from the writer at the stop: the last notice's")
                return
            for data in sockets.drain(self.writer.sock):
                self.writer.answered(self.comp, data)
        if wait.durable_offset is not None:
            self.comp.durable_next = max(self.comp.durable_next, wait.durable_offset)

    def snapshot_at_stop(self) -> None:
        """A graceful stop commits the store (the next start replays nothing),
        then snapshots the durable entries past the newest snapshot, automatic
        snapshots or not, as before the store: the snapshot is what a lost
        store, a replica and retention fall back on. A failure of either (or
        a kill during the snapshot) costs only the next start's replay."""
        self.commit_store()
        comp = self.comp
        if comp.stuck is not None or comp.durable_next <= (comp.snapshot_offset or 0):
            return
        t0 = time.monotonic()
        try:
            code, snap = comp.take_snapshot(comp.durable_next)
        except (WalError, OSError) as err:
            code, snap = Code.CRASH, {"text": str(err)}
        if code != m.OK:
            log.warning("no snapshot at the stop: %s", snap["text"])
            return
        ms = (time.monotonic() - t0) * 1000
        log.info("snapshot at offset %d at the stop, in %.0f ms", snap["snapshot_offset"], ms)

    def auto_snapshot(self) -> None:
        comp = self.comp
        comp.auto_busy = True
        try:
            code, snap = comp.take_snapshot(comp.durable_next)
        except (WalError, OSError) as err:
            code, snap = Code.CRASH, {"text": str(err)}
        if code != m.OK:
            comp.auto_busy = False
            comp.auto_retry_at = time.monotonic() + AUTO_RETRY_DELAY
            log.error("automatic snapshot failed: %s (retrying later)", snap["text"])
            return
        target = comp.retention_target(snap["snapshot_offset"])
        log.info("automatic snapshot at offset %d", snap["snapshot_offset"])
        if target > 0:
            self.writer.ask(m.OP_TRUNCATE, [target, None, True], AutoWait(target))
        else:
            comp.auto_busy = False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="walnode-compactor")
    add_process_flags(p, data_dir=True)
    sockets.add_remote_flags(p, "--listen")
    CompactorConfig.add_flags(p)
    p.add_argument("--cluster", default=None, help="beside a cluster's replica")
    args = p.parse_args(argv)
    config = CompactorConfig.from_args(args)
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    ignore_stop_signals()  # the supervisor decides for us
    comp = Compactor(
        DataDir(args.data_dir, create=False),
        snapshot_every=config.snapshot_every,
        snapshot_every_bytes=config.snapshot_every_bytes,
        keep_entries=config.keep_entries,
        keep_snapshots=config.keep_snapshots,
        auto=config.auto_compact,
    )
    if args.cluster is not None:
        comp.serving_until = 0.0  # no kv_get before the replica's notice says it leads
    ctx = zmq.Context()
    routers = [sockets.bind_router(ctx, sockets.compactor_endpoint(args.run_dir))]
    writer = sockets.connect_dealer(ctx, sockets.writer_endpoint(args.run_dir))
    control = sockets.connect_dealer(ctx, sockets.supervisor_endpoint(args.run_dir), "compactor")
    # Replay only what is durable: ask the writer for a sync barrier first.
    writer.send(m.pack([m.REQUESTS, [[0, m.OP_SYNC, None]]]))
    if not writer.poll(30_000):
        log.error("the writer did not answer within 30 s; exiting to be restarted")
        return 1
    ((_, code, fields),) = m.unpack(writer.recv())[1]
    try:
        recovery = comp.recover(fields["durable_offset"])
    except (CorruptionError, WalError) as err:
        log.error("refusing to start: %s", err)
        return Exit.CORRUPT  # the log was compacted past every loadable snapshot
    log.info(
        "recovered: the state store at offset %d%s, replayed %d entries, applied through "
        "offset %d (newest snapshot at %s)",
        recovery["store_offset"],
        " (rebuilt)" if recovery["store_rebuilt"] else "",
        recovery["entries_recovered"],
        comp.sm.applied_offset,
        recovery["snapshot_offset"],
    )
    control.send(m.pack([m.READY, "compactor", os.getpid(), recovery]))
    remote = sockets.remote_from(args.listen, args)
    if remote is not None:
        if remote.keys_dir:
            sockets.start_authenticator(ctx, remote.keys_dir)
        routers.append(sockets.bind_remote_router(ctx, remote, remote.compactor))
    Server(comp, routers, writer, control).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
