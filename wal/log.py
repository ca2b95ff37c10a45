"""The log: an ordered run of segments holding entries at dense offsets.

Appends are staged, written together by `flush` (one write per batch) and
made durable by `sync` (one fdatasync per batch): the group commit of the
writer process is built from these three calls. Opening a log checks it: a
torn tail of the newest segment is cut (and reported), damage anywhere else
raises CorruptionError naming the file and byte. A sealed segment with a
valid index file is trusted without reading its records (wal/index.py), so
opening costs about the newest segment's size, not the whole log's.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import time
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from wal import checkpoint, faults, index, layout, record
from wal.errors import CorruptionError, DataMissing, DiskFull, WalError
from wal.filecache import FileCache
from wal.fsutil import (
    disk_full_undone,
    fsync_dir,
    make_dirs,
    replace_durably,
    write_all,
    write_temp,
)
from wal.layout import TMP_SUFFIX
from wal.prefill import Preparer
from wal.segment import ReadRecord, ScanResult, Segment, segment_name

LOG_START = "LOG_START"  # the compaction commit point: the first retained offset
PREPARE_FROM = 0.5  # the next segment's fill starts once the active one is half full

DEFAULT_MAX_SEGMENT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    offset: int
    payload: bytes
    crc: int
    checksum_valid: bool
    lost: bool = False  # a lost-record marker left by walctl repair; payload says what was lost
    # An epoch-start record of a replicated log (payload b""): the epoch it starts
    epoch_start: int | None = None


@dataclass(frozen=True)
class DamagedRecord:
    """A record that fails its CRC, kept at its offset (reads say it is invalid)."""

    file: str
    byte: int
    offset: int
    reason: str


@dataclass(frozen=True)
class SegmentInfo:
    file: str
    start_offset: int
    end_offset: int | None  # inclusive; None for an empty segment
    entries: int
    size_bytes: int  # record bytes (the active segment's file is longer: preallocated zeros)
    sealed: bool


@dataclass
class RecoveryReport:
    """What opening the log found; the writer logs it and `status` shows it."""

    segments: int = 0
    segments_indexed: int = 0  # sealed segments opened through their index, not read
    checkpoint_bytes: int = 0  # the newest segment's prefix taken from its checkpoint, not read
    entries_recovered: int = 0
    first_offset: int = 0
    next_offset: int = 0
    bytes_truncated: int = 0
    truncated_file: str | None = None
    truncated_at: int | None = None
    truncation_reason: str | None = None
    interrupted_roll: str | None = None  # an empty segment a cut roll left, removed
    duration_ms: float = 0.0
    notes: list[str] = field(default_factory=list)
    damaged: list[DamagedRecord] = field(default_factory=list)  # rotted records found in scans
    lost: list[int] = field(default_factory=list)  # offsets of lost-record markers scanned

    def as_dict(self) -> dict:
        return asdict(self)


class OffsetOutOfRange(WalError):
    """An offset before the first retained entry or at/after the next one."""

    def __init__(self, offset: int, first: int, next_: int) -> None:
        self.offset, self.first_offset, self.next_offset = offset, first, next_
        if offset < first:
            why = f"offset {offset} was compacted away; the log starts at {first}"
        else:
            why = f"offset {offset} is not written yet; the next offset is {next_}"
        super().__init__(why)


@dataclass
class RollStats:
    """The rolls since open: how many took a prepared file (wal/prefill.py) and
    how many created their segment (none was ready), and their time."""

    prepared: int = 0
    created: int = 0
    last_seconds: float = 0.0  # the last roll's time on the caller's thread
    last_new_seconds: float = 0.0  # of it, after the old segment was sealed and indexed


@dataclass
class Compaction:
    """A truncate_before in steps (Log.compaction). Its own methods do only
    file work on files no reader of the log opens (the rewrite, LOG_START's temp
    file, the directory), so they may run in a thread while the log serves;
    the Log's methods between them change the log and run where it is served."""

    directory: str
    offset: int
    source: Segment  # the segment holding `offset` (rewritten if it straddles it)
    entries_before: int
    bytes_before: int
    first: int = 0  # the source's first entry kept
    start: int = 0  # its byte in the source
    end: int = 0  # the source's bytes at the plan, copied by `rewrite`
    positions: array | memoryview | None = None  # the source's from `first` (unshifted)
    rewrites: bool = False  # the source straddles the offset (or it is past the end)
    read_fd: int = -1
    files: FileCache | None = None
    preallocate_to: int = 0  # the source was the active segment: the rewrite takes appends
    rewritten: Segment | None = None

    def rewrite(self) -> None:
        """Copy the source's records from the offset on into a fsynced temp file
        (named for the offset; past the end, empty), zero-filled ahead if it will
        take appends; then LOG_START's temp file, fsynced (so the commit is a
        rename). Nothing is committed."""
        if self.rewrites:
            assert self.positions is not None  # taken by the plan
            path = os.path.join(self.directory, segment_name(self.offset))
            data = os.pread(self.read_fd, self.end - self.start, self.start)
            shifted = array("Q", (p - self.start for p in self.positions))
            self.positions = None  # a sealed source's is a view of its mapped index
            with disk_full_undone(path + TMP_SUFFIX):
                fd = os.open(path + TMP_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    write_all(fd, data[: len(data) // 2])
                    faults.point("compact.rewrite_half_written")
                    write_all(fd, data[len(data) // 2 :])
                    seg = Segment(
                        path, self.offset, fd, shifted, len(data), False, files=self.files
                    )
                    if self.preallocate_to:
                        seg._preallocate(len(data) + 1, self.preallocate_to)
                    faults.point("compact.rewrite_fsync")
                    os.fsync(fd)
                except BaseException:
                    os.close(fd)
                    raise
            self.rewritten = seg
        write_temp(os.path.join(self.directory, LOG_START), f"{self.offset}\n".encode())

    def commit(self) -> None:
        """The commit point: what `switch` copied made durable, then LOG_START's
        temp file renamed over it and the directory fsynced (which also makes
        the rewrite's entry durable)."""
        faults.point("compact.before_commit")
        if self.rewritten is not None:
            self.rewritten.sync()  # fdatasync: its zero-filled blocks take the copy, no metadata
        path = os.path.join(self.directory, LOG_START)
        replace_durably(path + ".tmp", path)
        faults.point("compact.after_commit")

    def sync_dir(self) -> None:
        """The rename and the deletes of `finish`, durable."""
        fsync_dir(self.directory)

    def discard(self) -> None:
        """Not committed (a failure before `commit`): remove the temp files."""
        if self.rewritten is not None:
            self.rewritten.close()
        if self.rewrites:  # a rewrite was begun (a failed one has no Segment)
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.directory, segment_name(self.offset)) + TMP_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.directory, LOG_START) + ".tmp")
        self.close()

    def close(self) -> None:
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1


class Log:
    """A segmented write-ahead log in one directory."""

    def __init__(
        self,
        directory: str,
        segments: list[Segment],
        max_segment_bytes: int,
        files: FileCache | None = None,
    ) -> None:
        self.directory = directory
        self._files = files if files is not None else FileCache()
        self._segments = segments
        self._bases = [s.base_offset for s in segments]
        self._max_segment_bytes = max_segment_bytes
        self._preparer: Preparer | None = None  # start_preparing: the next segment made ahead
        self._prepare_from = PREPARE_FROM  # how full the active segment is when it starts
        self._prepare_pending = False  # the next segment is wanted once that is reached
        self.rolls = RollStats()
        # Told (took a prepared file, seconds) after each roll: the writer's metrics.
        self.on_roll: Callable[[bool, float], object] | None = None
        self._durable_next = self.next_offset  # everything opened is on disk
        self._flushed_next = self.next_offset
        self.bytes_appended = 0  # record bytes appended since open (a counter for notices)
        self._bytes_flushed = 0
        # Told the base of the active segment before its first entry is staged,
        # so that the data directory can record how far the log reached (and
        # a start-up can tell a deleted newest segment from a short log).
        self.on_reach: Callable[[int], object] | None = None
        self.reached: int | None = None  # the last base on_reach was told

    # -- opening ---------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str,
        *,
        max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
        readonly: bool = False,
        reached: int | None = None,
    ) -> tuple[Log, RecoveryReport]:
        """Open (creating if needed) and check the log in `directory`.

        readonly: check and report, change nothing (a torn tail is reported,
        not cut, and no segment is created): for offline tools.
        reached: the newest segment base the data directory recorded; a log
        whose newest segment starts before it lost acknowledged entries
        (DataMissing).
        """
        t0 = time.monotonic()
        report = RecoveryReport()
        if not readonly:
            make_dirs(directory)
        plan = _layout(directory, readonly, report.notes)
        names = plan.segments if plan is not None else []
        check_reach(directory, names, reached)
        files = FileCache()
        segments, unindexed = _open_segments(names, readonly, files, report)
        if plan is not None and plan.interrupted_roll is not None:
            report.interrupted_roll = os.path.basename(plan.interrupted_roll)
            if not readonly:
                layout.drop_interrupted_roll(plan)
        if not segments and not readonly:
            start = read_start_offset(directory) or 0
            segments.append(Segment.create(directory, start, files))
            fsync_dir(directory)
        elif not readonly and not report.bytes_truncated:
            # A killed writer may have left written but unsynced records: make
            # them durable before this log calls them so (or snapshots them).
            # (Cutting a torn tail fsynced the file already.)
            segments[-1].sync()
        if not readonly:
            # Only now that every segment passed: a refused open changes nothing.
            for seg in unindexed:
                seg.write_index()  # it was missing, damaged or stale; the next open trusts it
            _remove_stale_indexes(directory, [s.base_offset for s in segments], report.notes)
        log = cls(directory, segments, max_segment_bytes, files)
        log.reached = reached
        report.segments = len(segments)
        report.first_offset = log.first_offset
        report.next_offset = log.next_offset
        report.entries_recovered = log.entries
        report.duration_ms = round((time.monotonic() - t0) * 1000, 3)
        return log, report

    def close(self) -> None:
        if self._preparer is not None:
            self._preparer.close()
            self._preparer = None
        for seg in self._segments:
            seg.close()
        self._files.close()

    def start_preparing(self, from_fill: float = PREPARE_FROM) -> None:
        """Prepare each next segment ahead in a background thread
        (wal/prefill.py), for the rolls to take; `close` stops it. Its fill
        starts once the active segment is `from_fill` full (0: at once), so a
        start, or a node that never fills half a segment, writes no whole
        segment of zeros (64 MiB at the default size) that no roll takes."""
        if self._preparer is None:
            self._prepare_from = from_fill
            self._preparer = Preparer(self.directory, None)
            self._prepare_pending = True
            self._prepare_if_due()

    def _prepare_if_due(self) -> None:
        """Want the next segment once the active one is `_prepare_from` full."""
        assert self._preparer is not None
        if self._segments and self._segments[-1].size >= (
            self._max_segment_bytes * self._prepare_from
        ):
            self._prepare_pending = False
            self._preparer.want(self._max_segment_bytes)

    @property
    def preparer(self) -> Preparer | None:
        return self._preparer

    @property
    def max_segment_bytes(self) -> int:
        return self._max_segment_bytes

    @max_segment_bytes.setter
    def max_segment_bytes(self, size: int) -> None:
        """A new roll size: the next segment is prepared at it (a ready file of the
        old size is removed, never used: it would be the wrong size)."""
        self._max_segment_bytes = size
        if self._preparer is not None:
            self._prepare_pending = False
            self._preparer.want(size)

    # -- shape -------------------------------------------------------------

    @property
    def first_offset(self) -> int:
        return self._segments[0].base_offset if self._segments else 0

    @property
    def next_offset(self) -> int:
        return self._segments[-1].next_offset if self._segments else 0

    @property
    def durable_offset(self) -> int:
        """Every entry below this offset has been fsynced."""
        return self._durable_next

    @property
    def entries(self) -> int:
        return self.next_offset - self.first_offset

    @property
    def total_bytes(self) -> int:
        """Bytes of the retained records, headers and payloads."""
        return sum(s.size for s in self._segments)

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    @property
    def active(self) -> Segment:
        return self._segments[-1]

    def segments(self) -> list[SegmentInfo]:
        self.flush()
        out = []
        for s in self._segments:
            out.append(
                SegmentInfo(
                    file=s.name,
                    start_offset=s.base_offset,
                    end_offset=s.next_offset - 1 if s.entries else None,
                    entries=s.entries,
                    size_bytes=s.size,
                    sealed=s.sealed,
                )
            )
        return out

    # -- writing -----------------------------------------------------------

    def append(self, payload: bytes) -> tuple[int, int]:
        """Stage one entry; returns (offset, crc). Not on disk until flush/sync."""
        return self._stage(*record.encode(payload))

    def append_many(self, payloads: list[bytes], staged: list[tuple[int, int]]) -> None:
        """Stage each payload in order exactly as `append` would, adding its
        (offset, crc) to `staged` as it is staged: if one fails (DiskFull at
        a roll), `staged` holds the ones before it. The writer's hot path: a
        record that fits the active segment is staged without the roll and
        reach checks, which `_stage` made for the first record there."""
        encode = record.encode
        room = -1  # bytes the active segment takes before it must roll
        offset = 0
        active = self._segments[-1]
        for payload in payloads:
            data, crc = encode(payload)
            size = len(data)
            if size > room:  # the first record, or a roll may be due: the full checks
                offset, _ = self._stage(data, crc)
                active = self._segments[-1]
                room = self.max_segment_bytes - active.size
            else:
                active.stage(data)
                self.bytes_appended += size
                room -= size
                offset += 1
            staged.append((offset, crc))

    def append_epoch_start(self, epoch: int) -> tuple[int, int]:
        """Stage an epoch-start record (a replicated leader's first record of its
        epoch); returns (offset, crc). Not on disk until flush/sync."""
        return self._stage(*record.encode_epoch_start(epoch))

    def _stage(self, data: bytes, crc: int) -> tuple[int, int]:
        active = self._segments[-1]
        if active.entries and active.size + len(data) > self.max_segment_bytes:
            self.roll()
            active = self._segments[-1]
        if self.on_reach is not None and self.reached != active.base_offset:
            # Before any entry of this segment can be acknowledged (a failure
            # here fails this append and stages nothing).
            self.on_reach(active.base_offset)
            self.reached = active.base_offset
        offset = active.next_offset
        active.stage(data)
        self.bytes_appended += len(data)
        return offset, crc

    def flush(self) -> None:
        """Write staged entries to the file (one write), without fsync.

        On a full disk the staged entries are dropped (next_offset goes back)
        and DiskFull is raised; the log is as it was before they were staged.
        """
        if not self._segments:  # a read-only view of an empty directory
            return
        try:
            self._segments[-1].flush(self.max_segment_bytes)
        except DiskFull:
            self.bytes_appended = self._bytes_flushed
            if self._preparer is not None:
                self._preparer.discard()  # its space to the appends; the next roll asks again
            raise
        self._flushed_next = self.next_offset
        self._bytes_flushed = self.bytes_appended
        if self._prepare_pending:
            self._prepare_if_due()

    def sync(self) -> None:
        """Flush and fdatasync. Raises on failure; never retried (fsyncgate)."""
        self.flush()
        if self._durable_next != self._flushed_next:
            target = self._flushed_next
            self._segments[-1].sync()
            self._durable_next = target
            self._segments[-1].checkpoint()  # after the fdatasync: it covers synced records only

    def flush_for_sync(self) -> tuple[int, int]:
        """For an fdatasync made outside the log (a sync thread, while more
        entries are staged): flush, then (a duplicate of the active segment's
        fd, which the caller fdatasyncs and closes; the offset that makes
        durable). A duplicate, so that a roll closing the segment meanwhile
        cannot hand its number to another file. Then `synced(target)`."""
        self.flush()
        return os.dup(self._segments[-1].fd), self._flushed_next

    def synced(self, target: int) -> None:
        """The fdatasync of a `flush_for_sync` returned: entries below `target` are durable."""
        self._durable_next = max(self._durable_next, target)

    def roll(self) -> None:
        """Seal the active segment and open a new one at the next offset.

        Ordered for a disk that keeps each file's unsynced data on its own:
        the old segment is fdatasynced and its index made durable before the
        new segment exists, so a new segment on disk always follows a whole
        one. On a full disk (DiskFull) the active segment stays active and
        unsealed, with its staged entries dropped as `flush` drops them.
        """
        t0 = time.perf_counter()
        self.flush()
        old = self._segments[-1]
        old.seal()  # fdatasync: a sealed segment is whole on disk before anything follows it
        faults.point("roll.before_index")
        # Derived data: without it the next open scans this segment. Its rename is made
        # durable by the directory fsync below, with the new segment's entry: one fsync.
        old.write_index(sync_dir=False)
        t1 = time.perf_counter()
        size = self._max_segment_bytes
        prepared = self._preparer.take(size) if self._preparer is not None else None
        if prepared is not None:
            faults.point("roll.before_rename")
            new = Segment.adopt(self.directory, old.next_offset, prepared, self._files)
            faults.point("roll.after_rename")
        else:
            path = os.path.join(self.directory, segment_name(old.next_offset))
            try:
                with disk_full_undone(path):
                    new = Segment.create(self.directory, old.next_offset)
            except DiskFull:
                self._reactivate(old)
                raise
        fsync_dir(self.directory)  # its entry durable before any append in it is acknowledged
        faults.point("roll.after_dir_fsync")
        self._segments.append(new)
        self._bases.append(new.base_offset)
        if self._preparer is not None:  # its name is free again; after a full disk: wanted again
            self._prepare_pending = True
            self._prepare_if_due()
        t2 = time.perf_counter()
        self.rolls.last_seconds, self.rolls.last_new_seconds = t2 - t0, t2 - t1
        if prepared is not None:
            self.rolls.prepared += 1
        else:
            self.rolls.created += 1
        if self.on_roll is not None:
            self.on_roll(prepared is not None, self.rolls.last_seconds)

    def _reactivate(self, sealed: Segment) -> None:
        """The roll could not create the next segment: `sealed` takes appends again."""
        sealed.close()
        index.remove(sealed.path)  # if this is lost, a stale index is ignored (size differs)
        self._segments[-1], _ = Segment.open_checked(
            sealed.path, sealed.base_offset, last=True, writable=True
        )

    def truncate_from(self, offset: int) -> None:
        """Remove every entry from `offset` on, durably (a replicated log cutting a
        suffix its leader does not have; never below first_offset).

        Ordered for a per-file disk: the recorded reach is lowered first (a newer
        segment than recorded is fine at open), then the later segments are
        deleted newest first and the directory fsynced, then the segment holding
        `offset` is cut (ftruncate, fsync). A cut between leaves a prefix of the
        old log, longer than asked, never a gap. The cut segment, if it was
        sealed, takes appends again (its index file is removed: no longer true).
        """
        self.flush()
        if not self.first_offset <= offset <= self.next_offset:
            raise WalError(
                f"cannot truncate from {offset}: the log holds [{self.first_offset}, "
                f"{self.next_offset})"
            )
        if offset == self.next_offset:
            return
        i = bisect.bisect_right(self._bases, offset) - 1
        keep, later = self._segments[i], self._segments[i + 1 :]
        if later:
            if self.on_reach is not None:
                self.on_reach(keep.base_offset)
            self.reached = keep.base_offset
            for seg in reversed(later):
                seg.close()
                os.remove(seg.path)
                index.remove(seg.path)
            fsync_dir(self.directory)
            del self._segments[i + 1 :]
            del self._bases[i + 1 :]
        if keep.sealed:
            # Its index is removed without a directory fsync: one that comes back is
            # ignored while the segment is the newest, and the roll that seals it again
            # writes a new one before any segment follows it.
            self._reactivate(keep)
        self._segments[-1].drop_from(offset - keep.base_offset)
        self._flushed_next = min(self._flushed_next, offset)
        self._durable_next = min(self._durable_next, offset)

    # -- compaction ----------------------------------------------------------

    def segment_start(self, offset: int) -> int:
        """The first offset of the segment holding `offset` (at most next_offset)."""
        if offset <= self.first_offset:
            return offset
        return self._bases[bisect.bisect_right(self._bases, offset) - 1]

    def truncate_before(self, offset: int, *, past_end: bool = False) -> tuple[int, int, int]:
        """Remove every entry below `offset` from the directory, all steps here.

        past_end: `offset` may be beyond next_offset (a replica installing a
        snapshot newer than its whole log): every segment goes and the log
        restarts, empty, at `offset`, by the same steps with an empty rewrite.

        Returns (entries_before, entries_after, record_bytes_freed). The steps
        are those of a `Compaction` (below), which the writer runs with its
        file work in a thread while it serves appends; here they run in turn.
        """
        job = self.compaction(offset, past_end=past_end)
        if job is None:
            return self.entries, self.entries, 0
        try:
            job.rewrite()
        except DiskFull:
            job.discard()
            raise
        self.switch(job)
        job.commit()
        self.finish(job)
        job.sync_dir()
        return self.finished(job)

    def compaction(self, offset: int, *, past_end: bool = False) -> Compaction | None:
        """Plan removing every entry below `offset`: None if there is nothing to
        remove. The caller then runs, in this order, `rewrite` (file work: any
        thread), `switch` (here), `commit` (file work), `finish` (here),
        `sync_dir` (file work) and `finished` (here). Between the steps the log
        takes appends and serves reads as before; only between `switch` and
        `finish` may nothing staged since the switch be acknowledged (those
        entries are in the rewrite only, which is not part of the log until
        the commit).

        Whole segments below the offset are deleted; the one that straddles it
        is rewritten from the offset on, so no record below it is left in any
        file. Crash-safe: the rewrite is written and fsynced as a temp file,
        then LOG_START is replaced atomically (the commit point), then the
        temp file is renamed in and the old files deleted. Log.open finishes a
        committed compaction and discards an uncommitted one."""
        self.flush()
        if offset <= self.first_offset:
            return None
        if offset > self.next_offset and not past_end:
            raise WalError(f"cannot compact at {offset}: the log ends at {self.next_offset}")
        i = bisect.bisect_right(self._bases, offset) - 1
        seg = self._segments[i]
        job = Compaction(self.directory, offset, seg, self.entries, self.total_bytes)
        if offset > self.next_offset or seg.base_offset != offset:
            first = min(offset - seg.base_offset, seg.entries)  # not `index`: the module's name
            job.rewrites = True
            job.first = first
            job.start = seg.bytes_before(first)
            job.end = seg.size  # flushed above: these bytes never change
            job.positions = seg._positions[first:]  # a copy (one memcpy); shifted in the job
            job.read_fd = os.open(seg.path, os.O_RDONLY)  # its own: a roll may close seg's
            job.files = self._files
            if seg is self._segments[-1]:
                job.preallocate_to = self.max_segment_bytes
        return job

    def switch(self, job: Compaction) -> None:
        """After `rewrite`: copy what was appended to the straddling segment since
        the plan into the rewrite and put the rewrite in the log beside it (reads
        below the offset still find the old segment). If the straddling segment
        was the active one, the rewrite takes the appends from here on."""
        rewritten, seg = job.rewritten, job.source
        if rewritten is None:
            return
        self.flush()
        nth = job.first + rewritten.entries  # the source's first entry not copied yet
        if nth < seg.entries:  # appended since the plan (none to a sealed one, or past the end)
            base = seg.bytes_before(nth)
            data = seg.read_bytes(base, seg.size - base)
            for k in range(nth, seg.entries):
                at = seg.bytes_before(k) - base
                rewritten.stage(data[at : at + seg.record_bytes(k)])
            rewritten.flush(self.max_segment_bytes)
        if seg.sealed:
            rewritten.seal()  # it was sealed at the plan, or a roll sealed it since
        else:
            # Before any entry is staged in it. No record of the reach is needed: its
            # base is above the one recorded, and once it is committed every segment
            # below it is gone, so a start that does not find it finds no newer
            # segment and still refuses (check_reach); uncommitted, the record stands.
            self.reached = rewritten.base_offset
        i = self._segments.index(seg)
        self._segments.insert(i + 1, rewritten)
        self._bases.insert(i + 1, rewritten.base_offset)

    def finish(self, job: Compaction) -> None:
        """After `commit`: rename the rewrite in and delete the segments below
        the offset (their directory entries are made durable by `sync_dir`)."""
        i = self._segments.index(job.source)
        if job.rewritten is not None:
            os.rename(job.rewritten.path + TMP_SUFFIX, job.rewritten.path)
            faults.point("compact.after_rename")
            doomed = self._segments[: i + 1]
            self._segments = self._segments[i + 1 :]
        else:
            doomed = self._segments[:i]
            self._segments = self._segments[i:]
        for old in doomed:
            old.close()
            os.remove(old.path)
            index.remove(old.path)
            faults.point("compact.deleting")
        self._bases = [s.base_offset for s in self._segments]
        self._durable_next = max(self._durable_next, self.first_offset)  # past the end
        self._flushed_next = max(self._flushed_next, self.first_offset)
        job.close()

    def finished(self, job: Compaction) -> tuple[int, int, int]:
        """After `sync_dir`: index a sealed rewrite; (entries_before,
        entries_after, record_bytes_freed)."""
        if job.rewritten is not None and job.rewritten.sealed:
            job.rewritten.write_index()
        return job.entries_before, self.entries, job.bytes_before - self.total_bytes

    # -- reading -----------------------------------------------------------

    def _locate(self, offset: int) -> tuple[Segment, int]:
        if not self.first_offset <= offset < self.next_offset:
            raise OffsetOutOfRange(offset, self.first_offset, self.next_offset)
        i = bisect.bisect_right(self._bases, offset) - 1
        seg = self._segments[i]
        return seg, offset - seg.base_offset

    def read(self, offset: int) -> Entry:
        seg, nth = self._locate(offset)
        return _entry(offset, seg.read_range(nth, 1)[0])

    def scan(self, from_offset: int, max_entries: int, max_bytes: int) -> list[Entry]:
        """Up to `max_entries` entries from `from_offset`, about `max_bytes` at most.

        Always returns at least one entry when one exists, so a consumer
        never stalls on a single large entry. From next_offset: empty list.
        """
        if from_offset == self.next_offset and from_offset >= self.first_offset:
            return []
        self._locate(from_offset)  # raises OffsetOutOfRange outside the log
        out: list[Entry] = []
        budget = max_bytes
        offset = from_offset
        while len(out) < max_entries and offset < self.next_offset:
            seg, nth = self._locate(offset)
            count = 0
            while (
                nth + count < seg.entries
                and len(out) + count < max_entries
                and (count == 0 and not out or seg.record_bytes(nth + count) <= budget)
            ):
                budget -= seg.record_bytes(nth + count)
                count += 1
            if count == 0:
                break
            for got in seg.read_range(nth, count):
                out.append(_entry(offset, got))
                offset += 1
        return out


def _entry(offset: int, got: ReadRecord) -> Entry:
    # a marker's CRC holds, but what it stands for is gone: not a valid entry
    if got.epoch_start is not None:
        return Entry(offset, b"", got.crc, True, False, got.epoch_start)
    return Entry(offset, got.payload, got.crc, got.valid and not got.lost, got.lost)


def _open_segments(
    names: list[tuple[int, str]], readonly: bool, files: FileCache, report: RecoveryReport
) -> tuple[list[Segment], list[Segment]]:
    """Open every segment in order, each sealed one through its index if that
    is trusted, else by a scan (the newest always by a scan); a gap refuses.
    Returns the segments and the sealed ones that were scanned (their index
    is to be written). A torn tail of the newest is cut unless readonly."""
    segments: list[Segment] = []
    unindexed: list[Segment] = []
    try:
        for i, (base, path) in enumerate(names):
            last = i == len(names) - 1
            seg = None if last else Segment.open_indexed(path, base, files=files)
            scan = None
            if seg is not None:
                report.segments_indexed += 1
            else:
                seg, scan = Segment.open_checked(
                    path, base, last=last, writable=not readonly, files=files
                )
            if segments and segments[-1].next_offset != base:
                seg.close()
                raise _gap(segments[-1], base, path)
            segments.append(seg)
            if scan is None:
                continue
            if not last:
                unindexed.append(seg)
            report.checkpoint_bytes = scan.checkpointed if last else 0
            _report_rot(report, seg, scan)
            if scan.damage is not None:  # a torn tail of the last segment
                report.truncated_file = os.path.basename(path)
                report.truncated_at = scan.valid_end
                report.truncation_reason = scan.damage.value
                report.bytes_truncated = scan.file_size - scan.valid_end
                if not readonly:
                    seg.cut_tail(scan.file_size)
    except BaseException:
        for seg in segments:
            seg.close()
        raise
    return segments, unindexed


def _gap(previous: Segment, base: int, path: str) -> CorruptionError:
    """The refusal for a segment that does not start where the previous ends."""
    text = (
        f"segment starts at offset {base} but the previous one ends before offset "
        f"{previous.next_offset} (a gap or overlap)"
    )
    if base > previous.next_offset:
        return DataMissing(
            path,
            f"{text}: entries {previous.next_offset} to {base - 1} are gone ({previous.name} "
            f"was cut short, or a segment after it removed)",
        )
    return CorruptionError(path, 0, text)


def check_reach(directory: str, names: list[tuple[int, str]], reached: int | None) -> None:
    """DataMissing if the newest segment starts before the recorded reach: the
    segment at `reached` (and what it held) was removed. A newer segment than
    recorded is fine: a crash between its creation and the record leaves that,
    and none of its entries was acknowledged before the record."""
    if reached is None or (names and names[-1][0] >= reached):
        return
    held = f"the newest segment is {segment_name(names[-1][0])}" if names else "no segment is left"
    raise DataMissing(
        os.path.join(directory, segment_name(reached)),
        f"the log reached this segment (walnode.meta records reached_segment {reached}) "
        f"but it is gone and {held}",
    )


def _report_rot(report: RecoveryReport, seg: Segment, scan: ScanResult) -> None:
    """Record every rotted record and lost-record marker a scan kept."""
    for pos in scan.rotted:
        offset = seg.base_offset + bisect.bisect_left(scan.positions, pos)
        report.damaged.append(DamagedRecord(seg.name, pos, offset, record.Damage.BAD_CRC.value))
    report.lost.extend(seg.base_offset + bisect.bisect_left(scan.positions, p) for p in scan.lost)


def read_start_offset(directory: str, *, settle: bool = False) -> int | None:
    """The first retained offset recorded by the last compaction, if any.
    settle (the writer's start): also remove `LOG_START.tmp`, which a crash
    between a compaction's rewrite and its commit leaves (no directory fsync:
    one that comes back is ignored, and the next compaction truncates it)."""
    if settle:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, LOG_START) + ".tmp")
    try:
        with open(os.path.join(directory, LOG_START), "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    if not (text.endswith(b"\n") and text[:-1].isdigit()):
        raise CorruptionError(
            os.path.join(directory, LOG_START),
            None,
            f"it holds {text[:40]!r}, not an offset (decimal digits and a newline); it "
            f"is replaced atomically, so this is damage from outside walnode",
        )
    return int(text)


def _layout(directory: str, readonly: bool, notes: list[str]) -> layout.Layout | None:
    """Decide which files make up the log (wal/layout.py) and, unless readonly,
    settle what a crash left of a compaction."""
    start = read_start_offset(directory, settle=not readonly) if os.path.isdir(directory) else None
    plan = layout.plan(directory, start)
    if plan is None:
        return None
    if start is not None and start not in dict(plan.segments):
        raise CorruptionError(
            os.path.join(directory, LOG_START),
            0,
            f"the log starts at offset {start} but no segment starts there",
        )
    notes.extend(plan.notes)
    if not readonly:
        layout.settle(plan)
    return plan


def _remove_stale_indexes(directory: str, bases: list[int], notes: list[str]) -> None:
    """Remove index files no sealed segment owns: the index of a deleted
    segment, of the newest one (it grows again, after a repair cut it), and
    temp files of an index write that was cut short; and checkpoints
    (wal/checkpoint.py) of any but the newest segment."""
    sealed = set(bases[:-1])
    removed = False
    for name in os.listdir(directory):
        base = index.parse_name(name)
        if (base is not None and base not in sealed) or name.endswith(
            index.SUFFIX + index.TMP_SUFFIX
        ):
            os.remove(os.path.join(directory, name))
            notes.append(f"removed {name}, a stale or unfinished segment index")
            removed = True
        newest = bases[-1] if bases else None
        held = checkpoint.parse_name(name)
        if held is not None and (held != newest or name.endswith(checkpoint.TMP_SUFFIX)):
            os.remove(os.path.join(directory, name))  # derived data: no note, no dir fsync
    if removed:
        fsync_dir(directory)  # or a removed index could come back, for a segment reusing its name
