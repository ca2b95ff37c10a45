"""The writer: the only process that writes the log.

Group commit: take every request waiting on the socket, stage all appends,
write them with one write, fdatasync once, then send every reply. Under
`--fsync always` no append is acknowledged before the fdatasync that made
it durable returns. A failed write or fdatasync is never retried: the
writer exits and the supervisor restarts it, and recovery reads the truth
from the files (PostgreSQL's rule since "fsyncgate").

The one exception is a full disk at write time: the log undoes the write
(wal.DiskFull), the appends that did not fit get error 11 (definitely not
written), and the writer goes on serving, so appends work again once
space is back.
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from actors import messages as m
from actors import metrics, sockets, spare
from actors.codes import Code, Exit
from actors.config import (
    FsyncPolicy,
    WriterConfig,
    add_process_flags,
)
from actors.runtime import die_with_parent, ignore_stop_signals, setup_logging
from wal import (
    CorruptionError,
    DataDir,
    DirectoryLocked,
    DiskFull,
    Log,
    WalError,
    snapshot,
)
from wal.datadir import MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES
from wal.errors import DataMissing
from wal.log import (
    DEFAULT_MAX_SEGMENT_BYTES,
    Compaction,
    Entry,
    OffsetOutOfRange,
    RecoveryReport,
)

log = setup_logging("writer")


SCAN_MAX_BYTES = 4 * 1024 * 1024
MAX_DRAIN_MESSAGES = 256  # messages taken into one group commit
# A batch with at least this many appends has its fdatasync in the sync thread
# (Commits); a smaller one is synced inline.
PIPELINE_MIN_APPENDS = 32
# What may be handled while an earlier batch's fdatasync runs: these only stage
# appends or read. Anything else waits for that batch first.
OVERLAPPABLE = frozenset(
    [m.OP_APPEND, m.OP_APPEND_RUN, m.OP_READ, m.OP_SCAN, m.OP_INFO, m.OP_SYNC, m.OP_SEGMENT_INFO]
)


class GroupCommitStats:
    """How well appends share fsyncs: for wal_info, since the writer started."""

    SAMPLES = 4096  # recent fsyncs kept for the latency percentiles

    def __init__(self) -> None:
        self.batches = 0
        self.entries = 0
        self.fsync_s: deque[float] = deque(maxlen=self.SAMPLES)

    def batch(self, entries: int, fsync_s: float) -> None:
        self.batches += 1
        self.entries += entries
        self.fsync_s.append(fsync_s)

    def as_dict(self) -> dict:
        lat = sorted(self.fsync_s)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6, 1) if lat else None

        return {
            "batches": self.batches,
            "entries": self.entries,
            "mean_batch": round(self.entries / self.batches, 2) if self.batches else None,
            "fsync_p50_us": pct(0.50),
            "fsync_p99_us": pct(0.99),
        }


def failed_reply(op: str, err: Exception) -> tuple[int, dict]:
    """The reply to a request the log refused with an error that is not a full disk."""
    return Code.CRASH, {"text": f"{op} failed in the writer: {err}"}


class Writer:
    def __init__(self, datadir: DataDir, wal: Log, policy: FsyncPolicy) -> None:
        self.datadir = datadir
        self.log = wal
        self.policy = policy
        self.last_sync = time.monotonic()
        # a handler answers (code, fields), or a callable that gives them after the commit;
        # appends are not among them: `handle` stages each run of them at once
        self.ops: dict[str, Callable[[Any], Any]] = {
            m.OP_READ: self.op_read,
            m.OP_SCAN: self.op_scan,
            m.OP_INFO: self.op_info,
            m.OP_SYNC: self.op_sync,
            m.OP_SEGMENT_CONFIG: self.op_segment_config,
            m.OP_SEGMENT_INFO: self.op_segment_info,
            m.OP_INIT: self.op_init,
            m.OP_TRUNCATE: self.op_truncate,
        }
        self._sync_requested = False
        self.stats = GroupCommitStats()
        # The first offset a full disk dropped in this batch: appends at or
        # after it are not written, whatever was decided for them before.
        self.disk_full_at: int | None = None
        self.metrics = metrics.for_writer(wal)  # None without --metrics-listen
        # The data directory as it was when the lock was taken: checked after
        # every commit, before any reply, so that a directory deleted or
        # replaced under the writer stops it before an offset is reused.
        self.identity = datadir.identity()
        # Given by Commits: runs a compaction's file steps in a thread while the
        # loop serves; None (a replica) runs them in op_truncate.
        self.start_compaction: Callable[[CompactionRun], Callable[[], tuple[int, dict]]] | None = (
            None
        )

    # -- request handlers: return (code, fields) or a callable giving them
    # after the commit (for answers that must describe the committed state).

    def op_read(self, offset: int) -> tuple[int, dict]:
        try:
            e = self.log.read(offset)
        except OffsetOutOfRange as err:
            return _out_of_range(err)
        if e.lost:
            return Code.KEY_DOES_NOT_EXIST, {
                "text": f"entry {offset} is lost: {_lost_text(e)}",
                "offset": offset,
                "lost": True,
            }
        reply = {
            "offset": e.offset,
            "payload": e.payload.decode("utf-8", "replace"),
            "checksum_valid": e.checksum_valid,
        }
        if e.epoch_start is not None:  # a replicated leader's first record: payload ""
            reply["epoch_start"] = e.epoch_start
        return m.OK, reply

    def op_scan(self, arg: list) -> tuple[int, dict]:
        from_offset, max_entries = arg
        try:
            entries = self.log.scan(from_offset, max_entries, SCAN_MAX_BYTES)
        except OffsetOutOfRange as err:
            return _out_of_range(err)
        out = []
        for e in entries:
            item = {"offset": e.offset, "payload": e.payload.decode("utf-8", "replace")}
            if e.lost:
                item = {"offset": e.offset, "payload": "", "checksum_valid": False}
                item["lost"] = _lost_text(e)
            elif not e.checksum_valid:
                item["checksum_valid"] = False
            elif e.epoch_start is not None:
                item["epoch_start"] = e.epoch_start
            out.append(item)
        return m.OK, {"entries": out, "next_offset": from_offset + len(out)}

    def op_info(self, _arg: None):
        def answer() -> tuple[int, dict]:
            lg = self.log
            return m.OK, {
                "entries": lg.entries,
                "total_bytes": lg.total_bytes,
                "fsynced": lg.durable_offset == lg.next_offset,
                "first_offset": lg.first_offset,
                "next_offset": lg.next_offset,
                "segments": lg.segment_count,
                "snapshot_offset": max(
                    snapshot.list_offsets(self.datadir.snapshot_dir), default=None
                ),
                "fsync_policy": self.policy.name,
                "group_commit": self.stats.as_dict(),
            }

        return answer

    def op_sync(self, _arg: None):
        self._sync_requested = True
        return lambda: (m.OK, {"durable_offset": self.log.durable_offset})

    def op_segment_config(self, size: int) -> tuple[int, dict]:
        if not MIN_SEGMENT_BYTES <= size <= MAX_SEGMENT_BYTES:
            return Code.MALFORMED_REQUEST, {
                "text": f"max_segment_bytes must be between {MIN_SEGMENT_BYTES} and "
                f"{MAX_SEGMENT_BYTES} (got {size})"
            }
        self.datadir.update_meta(max_segment_bytes=size)
        self.log.max_segment_bytes = size
        return m.OK, {"max_segment_bytes": size}

    def op_segment_info(self, _arg: None) -> tuple[int, dict]:
        infos = self.log.segments()
        return m.OK, {
            "segments": [i.__dict__ for i in infos],
            "active_segment": infos[-1].file,
        }

    def op_truncate(self, arg: list):
        """Drop every entry below `offset`. The compactor sends a refusal
        along when no durable snapshot covers it: that holds unless there is
        nothing to remove (an offset at or below the first one). With
        `whole_segments` (automatic retention) the offset moves down to the
        start of its segment: whole files are deleted and nothing is copied,
        so appends never wait for a segment rewrite."""
        offset, refusal, whole_segments = arg
        if whole_segments and offset <= self.log.next_offset:
            offset = self.log.segment_start(offset)
        if refusal is not None and offset > self.log.first_offset:
            return refusal[0], refusal[1]
        if offset > self.log.next_offset:
            return Code.PRECONDITION_FAILED, {
                "text": f"cannot compact at {offset}: the log ends at {self.log.next_offset}"
            }
        if self.start_compaction is None:  # a replica: every step here
            t0 = time.perf_counter()
            counts = self.log.truncate_before(offset)
            self.compacted(offset, whole_segments, counts, time.perf_counter() - t0)
            return _compacted_reply(counts)
        job = self.log.compaction(offset)
        if job is None:
            return _compacted_reply((self.log.entries, self.log.entries, 0))
        return self.start_compaction(CompactionRun(job, offset, whole_segments))

    def compacted(
        self, offset: int, whole_segments: bool, counts: tuple[int, int, int], seconds: float
    ) -> None:
        if self.metrics is not None:
            self.metrics.compacted(whole_segments, seconds)
        before, after, freed = counts
        if freed:
            log.info(
                "compacted below offset %d: %d -> %d entries, %d bytes freed",
                offset,
                before,
                after,
                freed,
            )

    def op_init(self, arg: list) -> tuple[int, dict]:
        """The first init records the node id and its cluster's node ids; a
        later one may be any of those ids (one front per id, docs/DEPLOY.md)."""
        node_id, node_ids = arg
        meta = self.datadir.read_meta()
        recorded = meta.get("node_id")
        members = meta.get("node_ids") or [recorded]
        if recorded is None:
            self.datadir.update_meta(node_id=node_id, node_ids=sorted(set(node_ids) | {node_id}))
        elif node_id not in members:
            return Code.PRECONDITION_FAILED, {
                "text": f"data directory {self.datadir.path} belongs to node {recorded!r} "
                f"(cluster {members}), not {node_id!r}: init with one of those ids or use "
                f"another --data-dir"
            }
        return m.OK, {}

    # -- the group commit ------------------------------------------------

    def handle(self, requests: list) -> list:
        """Run one message's requests in order; replies may be deferred callables.
        Each run of consecutive appends is staged in one call (`append_run`),
        and so is each wal_append_run (`append_compact`)."""
        replies: list = []
        ops = self.ops
        run: list = []  # consecutive appends not staged yet
        for request in requests:
            rid, op, arg = request
            if op == m.OP_APPEND:
                run.append(request)
                continue
            if run:
                self.append_run(run, replies)
                run = []
            if op == m.OP_APPEND_RUN:
                self.append_compact(rid, arg, replies)
                continue
            handler = ops.get(op)
            if handler is None:
                replies.append(
                    [rid, op, (Code.NOT_SUPPORTED, {"text": f"the writer does not serve {op!r}"})]
                )
                continue
            try:
                result = handler(arg)
            except DiskFull as err:
                self.disk_full(err)
                result = (Code.TEMPORARILY_UNAVAILABLE, {"text": f"{err}"})
            except (WalError, ValueError, TypeError) as err:
                result = failed_reply(op, err)
            replies.append([rid, op, result])
        if run:
            self.append_run(run, replies)
        return replies

    def append_run(self, run: list, replies: list) -> None:
        """Stage consecutive appends ([rid, op, payload], ...) with one call into
        the log, adding their [rid, op, (code, fields)] to `replies`: what
        `op_append` would have answered each of them, one by one."""
        start = 0
        while start < len(run):
            if self.disk_full_at is not None:  # staging more could reuse an offset answered
                replies.extend([rid, op, DISK_FULL_REPLY] for rid, op, _ in run[start:])
                return
            staged: list[tuple[int, int]] = []
            failed = self._stage_many([payload for _, _, payload in run[start:]], staged)
            ok = m.OK
            fields = m.append_ok_fields
            for (offset, crc), (rid, op, payload) in zip(staged, run[start:], strict=False):
                replies.append([rid, op, (ok, fields(offset, len(payload), crc))])
            start += len(staged)
            if failed is not None:
                replies.append([run[start][0], m.OP_APPEND, failed])
                start += 1

    def append_compact(self, first_rid: int, payloads: list, replies: list) -> None:
        """Stage a wal_append_run (messages.py): the appends with rids
        first_rid, first_rid+1, ..., adding to `replies` a RUN_OK item for
        each stretch of them that was staged and one error item for each
        that was not, in order: what `append_run` answers them one by one."""
        start = 0
        count = len(payloads)
        while start < count:
            if self.disk_full_at is not None:  # staging more could reuse an offset answered
                rids = range(first_rid + start, first_rid + count)
                replies.extend([rid, m.OP_APPEND, DISK_FULL_REPLY] for rid in rids)
                return
            staged: list[tuple[int, int]] = []
            failed = self._stage_many(payloads[start:] if start else payloads, staged)
            if staged:
                fields = [staged[0][0], m.pack_crcs([crc for _, crc in staged])]
                replies.append([first_rid + start, m.OP_APPEND_RUN, (m.RUN_OK, fields)])
                start += len(staged)
            if failed is not None:
                replies.append([first_rid + start, m.OP_APPEND, failed])
                start += 1

    def _stage_many(self, payloads: list, staged: list[tuple[int, int]]) -> tuple[int, dict] | None:
        """Log.append_many; the reply of the append it failed on, if one did."""
        try:
            self.log.append_many(payloads, staged)
        except DiskFull as err:
            self.disk_full(err)
            return DISK_FULL_REPLY
        except (WalError, ValueError, TypeError) as err:
            return failed_reply(m.OP_APPEND, err)
        return None

    def disk_full(self, err: DiskFull) -> None:
        log.warning("%s; failing the appends that did not fit until space is back", err)
        first_dropped = self.log.next_offset
        if self.disk_full_at is None or first_dropped < self.disk_full_at:
            self.disk_full_at = first_dropped

    def answer(self, op: str, result: object) -> list:
        """A handled request's final (code, fields), decided after the commit."""
        code, fields = result() if callable(result) else result  # type: ignore[misc]
        if (
            self.disk_full_at is not None
            and op == m.OP_APPEND
            and code == m.OK
            and fields[0] >= self.disk_full_at  # m.append_ok_fields: the offset first
        ):
            return list(DISK_FULL_REPLY)
        return [code, fields]

    def replies(self, handled: list) -> list:
        """A message's replies, [[rid, code, fields], ...], from what `handle`
        returned, once its commit is done."""
        if self.disk_full_at is None:  # `answer` without its disk-full check, inline
            return [
                [rid, *(result() if callable(result) else result)] for rid, _, result in handled
            ]
        replies = []
        for rid, op, result in handled:
            if op == m.OP_APPEND_RUN:
                replies += self.run_answer(rid, result[1])
            else:
                replies.append([rid, *self.answer(op, result)])
        return replies

    def run_answer(self, first_rid: int, fields: list) -> list:
        """A RUN_OK item's replies after a full disk dropped what was staged
        from disk_full_at on: those appends get the disk-full error, one each."""
        first_offset, crcs = fields
        assert self.disk_full_at is not None
        kept = max(0, min(len(crcs) // 4, self.disk_full_at - first_offset))
        replies = []
        if kept:
            replies.append([first_rid, m.RUN_OK, [first_offset, crcs[: 4 * kept]]])
        dropped = range(first_rid + kept, first_rid + len(crcs) // 4)
        replies += [[rid, *DISK_FULL_REPLY] for rid in dropped]
        return replies

    def commit(self) -> None:
        """Make what was handled as durable as the policy promises. On a full
        disk, what fitted is still made durable before any reply leaves.
        DataMissing if the data directory is not the one locked any more."""
        try:
            self._commit()
        except DiskFull as err:
            self.disk_full(err)
            self._commit()
        self.datadir.check_identity(self.identity)

    def _commit(self) -> None:
        policy = self.policy.name
        if policy == "always" or self._sync_requested:
            self._sync()
            self._sync_requested = False
        else:
            self.log.flush()
            if policy != "never" and self.sync_due() == 0:
                self._sync()

    def _sync(self) -> None:
        before = self.log.durable_offset
        t0 = time.perf_counter()
        self.log.sync()
        self.last_sync = time.monotonic()
        if self.log.durable_offset != before:
            entries, seconds = self.log.durable_offset - before, time.perf_counter() - t0
            self.stats.batch(entries, seconds)
            if self.metrics is not None:
                self.metrics.fsynced(entries, seconds)

    def flush_for_sync(self) -> tuple[int, int]:
        """Write what was handled, for an fdatasync in the sync thread:
        (a duplicate fd to fdatasync and close, the offset it makes durable).
        On a full disk, what fitted is written (as in `commit`)."""
        try:
            return self.log.flush_for_sync()
        except DiskFull as err:
            self.disk_full(err)
            return self.log.flush_for_sync()

    def synced(self, job: SyncJob) -> None:
        """A sync thread's fdatasync returned: its error raised (never retried,
        nothing it covered is answered), else its entries are durable.
        DataMissing if the data directory is not the one locked any more."""
        if job.error is not None:
            raise job.error
        before = self.log.durable_offset
        self.log.synced(job.target)
        self.last_sync = time.monotonic()
        if self.log.durable_offset != before:
            entries = self.log.durable_offset - before
            self.stats.batch(entries, job.seconds)
            if self.metrics is not None:
                self.metrics.fsynced(entries, job.seconds)
        self.datadir.check_identity(self.identity)

    def sync_due(self) -> float | None:
        """Seconds until the interval policy owes an fsync; None if nothing owed."""
        if self.policy.interval_s is None or self.log.durable_offset == self.log.next_offset:
            return None
        return max(0.0, self.last_sync + self.policy.interval_s - time.monotonic())


def staged_appends(handled: list) -> int:
    """How many appends a message's handled requests (Writer.handle) hold."""
    count = 0
    for _, op, result in handled:
        if op == m.OP_APPEND:
            count += 1
        elif op == m.OP_APPEND_RUN:
            count += len(result[1][1]) // 4  # RUN_OK's checksums, four bytes each
    return count


DISK_FULL_REPLY = (
    Code.TEMPORARILY_UNAVAILABLE,
    {
        "text": "disk full: this append was not written (nothing of it is in the log); "
        "free space on the data directory's file system, then retry"
    },
)


def _compacted_reply(counts: tuple[int, int, int]) -> tuple[int, dict]:
    before, after, freed = counts
    return m.OK, {"entries_before": before, "entries_after": after, "bytes_freed": freed}


def _lost_text(e: Entry) -> str:
    """What reading a lost-record marker says (docs/FORMAT.md)."""
    note = e.payload.decode("utf-8", "replace").strip()
    return (
        "its record could not be read and `walctl repair` put a lost-record marker in "
        "its place; the payload is gone" + (f" (what was found: {note})" if note else "")
    )


def _out_of_range(err: OffsetOutOfRange) -> tuple[int, dict]:
    return Code.KEY_DOES_NOT_EXIST, {
        "text": f"{err}; valid offsets are {err.first_offset} to {err.next_offset - 1}"
        if err.next_offset > err.first_offset
        else f"{err}; the log holds no entries yet",
        "first_offset": err.first_offset,
        "next_offset": err.next_offset,
    }


class Notices:
    """The writer's notices to the compactor (messages.py): the newest
    (durable_next, bytes_appended), sent at most once per NOTICE_INTERVAL_S.
    One per commit would wake the compactor (and two I/O threads) for every
    lone append, on the cores the reply's path needs."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.sent: tuple[int, int] | None = None
        self.newest: tuple[int, int] | None = None
        self.sent_at = -math.inf

    def offer(self, lg: Log, now: float) -> None:
        self.newest = (lg.durable_offset, lg.bytes_appended)
        if self.newest != self.sent and now - self.sent_at >= m.NOTICE_INTERVAL_S:
            try:
                self.sock.send(m.pack([m.NOTICE, *self.newest]), zmq.NOBLOCK)
                self.sent = self.newest
            except zmq.Again:
                pass  # the compactor is behind or down; a later notice says more
            self.sent_at = now

    def due(self, now: float) -> float | None:
        """Seconds until a held notice may go; None if none is held."""
        if self.newest == self.sent:
            return None
        return max(0.0, self.sent_at + m.NOTICE_INTERVAL_S - now)


@dataclass(slots=True)
class SyncJob:
    """One fdatasync for the sync thread: `fd` (a duplicate, closed after),
    making entries below `target` durable."""

    fd: int
    target: int
    error: OSError | None = None
    seconds: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)


class SyncThread:
    """fdatasyncs off the serving loop: os.fdatasync releases the GIL, so the
    loop receives and stages the next batch meanwhile. Each finished job
    writes a byte to a pipe the loop polls."""

    def __init__(self) -> None:
        self.wake_fd, self._signal_fd = os.pipe()
        os.set_blocking(self.wake_fd, False)
        self._jobs: queue.SimpleQueue[SyncJob] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="fdatasync", daemon=True).start()

    def submit(self, fd: int, target: int) -> SyncJob:
        job = SyncJob(fd, target)
        self._jobs.put(job)
        return job

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            t0 = time.perf_counter()
            try:
                os.fdatasync(job.fd)  # looked up at each call: tests inject faults into os
            except OSError as err:
                job.error = err
            finally:
                job.seconds = time.perf_counter() - t0
                os.close(job.fd)
                job.done.set()
                os.write(self._signal_fd, b"\0")

    def wake(self) -> None:
        """Wake the loop (another thread's work is done)."""
        os.write(self._signal_fd, b"\0")

    def clear_wake(self) -> None:
        try:
            os.read(self.wake_fd, 4096)
        except BlockingIOError:
            pass


@dataclass
class CompactionRun:
    """A wal_compact's steps (wal.log.Compaction) as the writer runs them: each
    file step in a thread of its own (os.fsync, os.rename and os.pwrite release
    the GIL), the log's steps in the loop when the thread is done. `held` is
    the message that asked, answered when the last step is done."""

    job: Compaction
    offset: int
    whole_segments: bool
    step: str = ""  # the file step running or last run: rewrite, commit, sync_dir
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    held: tuple[zmq.Socket, bytes, list] | None = None
    counts: tuple[int, int, int] | None = None
    started: float = field(default_factory=time.perf_counter)
    # between the switch and the commit: requests are taken but not handled (an
    # entry staged then would be in the uncommitted rewrite only, and a roll out of
    # it would leave a newer segment past the old log's end)
    deferring: bool = False
    # the batches staged when the rewrite took the active segment's place, and the
    # offset their entries reach: answered once the commit step synced them
    before_switch: tuple[list, int] | None = None

    def run(self, step: str, work: Callable[[], None], wake: Callable[[], None]) -> None:
        self.step, self.error = step, None
        self.done.clear()

        def body() -> None:
            try:
                work()
            except BaseException as err:  # handed to the loop, which decides
                self.error = err
            finally:
                self.done.set()
                wake()

        threading.Thread(target=body, name=f"compact-{step}", daemon=True).start()

    def answer(self) -> tuple[int, dict]:
        """The compactor's reply, once the run is over."""
        if isinstance(self.error, DiskFull):
            return Code.TEMPORARILY_UNAVAILABLE, {"text": f"{self.error}; nothing was compacted"}
        if self.error is not None:
            return Code.CRASH, {
                "text": f"compaction failed in the writer before its commit point, so "
                f"nothing was compacted: {self.error}"
            }
        assert self.counts is not None  # answered only once the last step is done
        return _compacted_reply(self.counts)


class Commits:
    """The group commits, in order. Under --fsync always a batch of at least
    PIPELINE_MIN_APPENDS appends is fdatasynced in the sync thread while the
    loop receives and stages the next one; its replies leave only once its
    fdatasync returned, and before any reply of a later batch. A smaller batch
    (a lone request) is synced inline: handing it to the thread would add two
    wake-ups to its latency for nothing to overlap. Requests that do more than
    stage an append or read (truncate_before, init, segment config) wait for
    the batch in flight first."""

    def __init__(self, writer: Writer, notices: Notices) -> None:
        self.writer = writer
        self.notices = notices
        self.syncer = SyncThread()
        self.staged: list[tuple[zmq.Socket, bytes, list]] = []  # handled, commit not begun
        self.inflight: tuple[list, SyncJob] | None = None
        self.compaction: CompactionRun | None = None
        self._starting: CompactionRun | None = None  # started by the message being handled
        self.deferred: list[tuple[zmq.Socket, bytes, list]] = []  # taken while deferring
        writer.start_compaction = self._start_compaction

    def wait_for_compaction(self) -> None:
        """Run the compaction in progress, if any, to its end here."""
        while self.compaction is not None:
            self.compaction.done.wait()
            self.advance_compaction()

    def handle(self, router: zmq.Socket, ident: bytes, requests: list) -> None:
        if self.compaction is not None and self.compaction.deferring:
            self.deferred.append((router, ident, requests))
            return
        if any(op not in OVERLAPPABLE for _, op, _ in requests):
            if self.inflight is not None:
                self.finish()
            self.wait_for_compaction()  # one compaction at a time; init etc. after it
        elif self.compaction is not None and any(op == m.OP_SYNC for _, op, _ in requests):
            # wal_sync answers once everything sent before it is durable: a
            # compaction answered or not yet, too (a client's barrier)
            self.wait_for_compaction()
        handled = self.writer.handle(requests)
        run, self._starting = self._starting, None
        if run is not None:  # answered when its last step is done
            run.held = (router, ident, handled)
            self.compaction = run
            run.run("rewrite", run.job.rewrite, self.syncer.wake)
            return
        self.staged.append((router, ident, handled))

    def _start_compaction(self, run: CompactionRun) -> Callable[[], tuple[int, dict]]:
        self._starting = run
        return run.answer

    def advance_compaction(self) -> None:
        """The compaction's file step is done: the log's step after it, then the next."""
        run = self.compaction
        assert run is not None and run.done.is_set()
        log_ = self.writer.log
        if run.error is not None:
            if run.step != "rewrite":
                raise run.error  # at or after the commit point: never retried, nothing answered
            run.job.discard()  # not committed: the log is as it was
            self._end_compaction(run)
            return
        if run.step == "rewrite":
            takes_appends = run.job.rewritten is not None and not run.job.source.sealed
            source_fd = self._quiesce(run) if takes_appends else None
            log_.switch(run.job)

            def commit() -> None:
                if source_fd is not None:
                    try:
                        os.fdatasync(source_fd)
                    finally:
                        os.close(source_fd)
                run.job.commit()

            run.run("commit", commit, self.syncer.wake)
        elif run.step == "commit":
            log_.finish(run.job)
            if run.before_switch is not None:  # durable in the log as it now is: answered
                batches, target = run.before_switch
                run.before_switch = None
                if self.inflight is not None:
                    self.finish()  # an earlier batch's replies leave first
                log_.synced(target)
                self.writer.datadir.check_identity(self.writer.identity)
                self.reply(batches)
            run.run("sync_dir", run.job.sync_dir, self.syncer.wake)
            self._undefer(run)
        else:
            run.counts = log_.finished(run.job)
            self.writer.compacted(
                run.offset, run.whole_segments, run.counts, time.perf_counter() - run.started
            )
            self._end_compaction(run)

    def _quiesce(self, run: CompactionRun) -> int | None:
        """Before the rewrite takes the straddling (active) segment's place: from
        here to the commit, requests are taken but not handled; what is staged
        is written into the straddling segment (so the switch copies it) and
        answered only after the commit step, which fdatasyncs it there first
        (the returned duplicate fd) and the rewrite second: before the commit
        point the straddling segment is the log, after it the rewrite. The
        batch in flight syncs the straddling segment as before. On a full disk
        the staged batches are committed here instead, as `begin` would."""
        run.deferring = True
        fd, target = self.writer.flush_for_sync()
        if self.writer.disk_full_at is None:
            run.before_switch, self.staged = (self.staged, target), []
            return fd
        os.close(fd)
        if self.inflight is not None:
            self.finish()
        batches, self.staged = self.staged, []
        self.writer.commit()
        self.reply(batches)
        return None

    def _undefer(self, run: CompactionRun) -> None:
        """Handle what was taken while the compaction was at its commit."""
        run.deferring = False
        deferred, self.deferred = self.deferred, []
        for router, ident, requests in deferred:
            self.handle(router, ident, requests)

    def _end_compaction(self, run: CompactionRun) -> None:
        self.compaction = None
        if run.held is not None:
            self.staged.append(run.held)  # its answer is decided: committed with the next batch

    def step(self) -> None:
        """After each poll: answer the batch whose fdatasync returned, take the
        compaction's next step if its file step is done, then begin the next
        commit if none is in flight (and the compaction is not at its commit)."""
        if self.inflight is not None and self.inflight[1].done.is_set():
            self.finish()
        if self.compaction is not None and self.compaction.done.is_set():
            self.advance_compaction()
        if self.inflight is None and not (self.compaction and self.compaction.deferring):
            self.begin()

    def begin(self) -> None:
        batches, self.staged = self.staged, []
        writer = self.writer
        appends = sum(staged_appends(replies) for _, _, replies in batches)
        if writer.policy.name == "always" and appends >= PIPELINE_MIN_APPENDS:
            fd, target = writer.flush_for_sync()
            self.inflight = (batches, self.syncer.submit(fd, target))
            return
        writer.commit()  # raises on I/O failure: no reply leaves for this batch
        self.reply(batches)

    def finish(self) -> None:
        """Wait for the batch in flight and answer it."""
        assert self.inflight is not None
        batches, job = self.inflight
        job.done.wait()
        self.inflight = None
        self.writer.synced(job)  # raises on I/O failure: no reply leaves for this batch
        self.reply(batches)

    def drain(self) -> None:
        """Stopping: commit and answer everything handled."""
        if self.inflight is not None:
            self.finish()
        while self.compaction is not None:
            self.compaction.done.wait()
            self.advance_compaction()
        batches, self.staged = self.staged, []
        self.writer.commit()
        self.reply(batches)

    def reply(self, batches: list) -> None:
        writer = self.writer
        for router, ident, replies in batches:
            sockets.send_to(router, ident, m.pack([m.REPLIES, writer.replies(replies)]))
        writer.disk_full_at = None
        if writer.metrics is not None:
            writer.metrics.committed(writer.log)  # after the replies: counts only what was acked
        self.notices.offer(writer.log, time.monotonic())


def _poll_timeout_ms(*dues: float | None) -> int | None:
    waits = [d for d in dues if d is not None]
    return math.ceil(min(waits) * 1000) if waits else None


def serve(
    writer: Writer,
    routers: list[zmq.Socket],
    control: zmq.Socket,
    notices_sock: zmq.Socket,
) -> None:
    """`routers`: the local ipc one, and a tcp one for remote fronts if any."""
    commits = Commits(writer, Notices(notices_sock))
    poller = zmq.Poller()
    for router in routers:
        poller.register(router, zmq.POLLIN)
    poller.register(control, zmq.POLLIN)
    poller.register(commits.syncer.wake_fd, zmq.POLLIN)
    stopping = False
    while not stopping:
        now = time.monotonic()
        timeout = (
            None  # the sync thread's pipe wakes us
            if commits.inflight is not None
            else _poll_timeout_ms(writer.sync_due(), commits.notices.due(now))
        )
        events = dict(poller.poll(timeout))
        if commits.syncer.wake_fd in events:
            # read before `done` is looked at: a byte written after a job was
            # answered must not make every later poll return at once
            commits.syncer.clear_wake()
        if control in events:
            msg = m.unpack(control.recv())
            stopping = msg[0] == m.STOP
            if msg[0] == m.PING:
                control.send(m.pack([m.PONG, os.getpid()]))
        for router in routers:
            if router not in events:
                continue
            for ident, data in sockets.drain_router(router, MAX_DRAIN_MESSAGES):
                msg = m.unpack(data)
                if msg[0] == m.REQUESTS:
                    commits.handle(router, ident, msg[1])
        commits.step()
    commits.drain()


def open_log(
    data_dir: str, lock_fd: int | None, config: WriterConfig, who: str = "writer"
) -> tuple[DataDir, Log, RecoveryReport] | Exit:
    """Lock the data directory and recover its log, logging what recovery found; or the exit
    status that says why not. The writer and a cluster's replica (actors/replica.py) both
    open their log here."""
    # Fault injection for tests: a slow start keeps the writer down for a while.
    time.sleep(float(os.environ.get("WALNODE_FAULT_WRITER_START_DELAY", "0")))
    datadir = DataDir(data_dir)
    try:
        datadir.lock(f"walnode {who} pid {os.getpid()}", lock_fd)
    except DirectoryLocked as err:
        log.error("%s", err)
        return Exit.LOCKED
    try:
        meta = datadir.read_meta()
        wanted = config.max_segment_bytes
        seg_bytes = wanted or meta.get("max_segment_bytes")
        if wanted and wanted != meta.get("max_segment_bytes"):
            datadir.update_meta(max_segment_bytes=wanted)
        wal, report = Log.open(
            datadir.wal_dir,
            max_segment_bytes=seg_bytes or DEFAULT_MAX_SEGMENT_BYTES,
            reached=meta.get("reached_segment"),
        )
        # recorded before the first entry of each new segment is staged: how
        # far the log reached, so that a start-up notices a deleted newest segment
        wal.on_reach = lambda base: datadir.update_meta(reached_segment=base)
        wal.start_preparing()  # the next segment zero-filled off this thread (wal/prefill.py)
    except CorruptionError as err:
        log.error("refusing to start: %s", err)
        return Exit.CORRUPT
    except (WalError, OSError) as err:
        log.error("refusing to start: %s", err)
        return Exit.IO
    log_recovery(report)
    return datadir, wal, report


def log_sockets(
    ctx: zmq.Context, run_dir: str, remote: sockets.Remote | None
) -> tuple[list[zmq.Socket], zmq.Socket, zmq.Socket]:
    """The log owner's sockets: routers for fronts (ipc, and tcp at --listen if given), its
    control link to the supervisor and its notices to the compactor. Bind only after
    recovery: a connection means ready."""
    routers = [sockets.bind_router(ctx, sockets.writer_endpoint(run_dir))]
    if remote is not None:
        if remote.keys_dir:
            sockets.start_authenticator(ctx, remote.keys_dir)
        routers.append(sockets.bind_remote_router(ctx, remote, remote.writer))
    control = sockets.connect_dealer(ctx, sockets.supervisor_endpoint(run_dir), "writer")
    notices = sockets.connect_dealer(ctx, sockets.compactor_endpoint(run_dir), lossy=True)
    return routers, control, notices


def log_recovery(report: RecoveryReport) -> None:
    if report.bytes_truncated:
        log.warning(
            "cut a torn tail: %d bytes at byte %d of %s (%s); they were never acknowledged",
            report.bytes_truncated,
            report.truncated_at,
            report.truncated_file,
            report.truncation_reason,
        )
    if report.interrupted_roll:
        log.warning(
            "removed %s, an empty segment left by a roll a power cut interrupted (its "
            "previous segment's tail was never acknowledged); the log continues at offset %d",
            report.interrupted_roll,
            report.next_offset,
        )
    for d in report.damaged:
        log.error(
            "entry %d fails its checksum (%s at byte %d): kept at its offset, read back "
            "with checksum_valid false",
            d.offset,
            d.file,
            d.byte,
        )
    log.info(
        "recovered %d entries (next offset %d) in %d segments in %.1f ms",
        report.entries_recovered,
        report.next_offset,
        report.segments,
        report.duration_ms,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="walnode-writer")
    add_process_flags(p, data_dir=True)
    p.add_argument("--lock-fd", type=int, default=None)
    p.add_argument("--spare-fd", type=int, default=None, help="a spare: wait (actors/spare.py)")
    WriterConfig.add_flags(p)
    sockets.add_remote_flags(p, "--listen")
    args = p.parse_args(argv)
    config = WriterConfig.from_args(args)
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    ignore_stop_signals()  # the supervisor decides for us
    if args.spare_fd is not None:  # imported already: only the log is left to open
        spare.wait_for_promotion(args.spare_fd)
    policy = config.fsync
    opened = open_log(args.data_dir, args.lock_fd, config)
    if isinstance(opened, Exit):
        return opened
    datadir, wal, report = opened
    ctx = zmq.Context()
    remote = sockets.remote_from(args.listen, args)
    routers, control, notices = log_sockets(ctx, args.run_dir, remote)
    control.send(m.pack([m.READY, "writer", os.getpid(), report.as_dict()]))
    writer = Writer(datadir, wal, policy)
    try:
        serve(writer, routers, control, notices)
    except DataMissing as err:
        log.critical("stopping without replying to this batch: %s", err)
        os._exit(Exit.CORRUPT)
    except OSError as err:
        # Never retried: what is on disk is whatever recovery will find.
        log.critical("I/O failure, exiting without acknowledging the batch: %s", err)
        os._exit(Exit.IO)
    writer.log.sync()
    writer.log.close()
    log.info("stopped; every entry below offset %d is durable", writer.log.durable_offset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
