"""A segment: one file of consecutive records, named by its first offset.

Only the newest segment (the active one) takes writes; older ones are
sealed: fsynced and never written again. Each segment has an offset index,
a flat run of record positions (not one Python object per entry), so
reading an entry is one pread. The active segment keeps it in memory
(`array('Q')`, 8 bytes per entry); a sealed one stores it in an index file
(wal/index.py) and reads it from there, mmapped.
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from array import array
from typing import NamedTuple

from wal import checkpoint, index, record
from wal.errors import CorruptionError, DiskFull, WalError
from wal.filecache import FileCache
from wal.fsutil import DISK_FULL_ERRNOS, write_all
from wal.prefill import Prepared
from wal.record import HEADER_SIZE, Damage, crc32

NAME_RE = re.compile(r"^(\d{20})\.log$")
# The active segment is zero-filled (and fsynced) this far ahead of its data,
# so that an append's fdatasync writes data blocks only, no size or extent
# change (docs/FORMAT.md). fallocate alone leaves unwritten extents, whose
# conversion at fdatasync is a metadata change too.
PREALLOCATE_CHUNK = 4 << 20
_ZEROS = bytes(1 << 20)


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}.log"


def parse_name(name: str) -> int | None:
    """The base offset a segment file name carries, or None if not a segment."""
    m = NAME_RE.match(name)
    return int(m.group(1)) if m else None


class ScanResult(NamedTuple):
    """What a sequential check of a segment file found."""

    positions: array  # start byte of every record kept, in order (rotted ones included)
    valid_end: int  # the byte after the last record kept
    file_size: int
    damage: Damage | None  # why decoding stopped before the end of the file
    # True when the damage is shaped like an interrupted append: no valid
    # record follows it, and a whole record with a bad CRC ends the file (or
    # only zero bytes follow it).
    tail_shaped: bool
    # Start bytes of whole records that fail their CRC but are kept in place,
    # their offset taken: the next record starts right after them (rot, not a
    # tear), or they end a sealed segment (which was fsynced whole).
    rotted: tuple[int, ...] = ()
    lost: tuple[int, ...] = ()  # start bytes of lost-record markers (walctl repair)
    data_crc: int | None = None  # CRC-32 of bytes [0, valid_end): asked of the newest only
    checkpointed: int = 0  # bytes at the start taken from a checkpoint (wal/checkpoint.py)


def scan_bytes(
    buf: bytes | memoryview | mmap.mmap,
    *,
    sealed: bool = False,
    prefix: checkpoint.Prefix | None = None,
) -> ScanResult:
    """Decode records from the start of `buf` (or after a verified `prefix`)
    until the end or the first damage that is not one rotted record (see
    ScanResult.rotted)."""
    positions = prefix.positions if prefix is not None else array("Q")
    size = len(buf)
    rotted: list[int] = []
    lost: list[int] = []
    pos = prefix.size if prefix is not None else 0
    while True:
        pos = record.valid_run(buf, pos, positions)
        if pos == size or (not sealed and record.zero_from(buf, pos)):
            # the end of the data: zeros after it are preallocated room, not damage
            # (a sealed segment was cut to its records: zeros there are damage)
            return ScanResult(positions, pos, size, None, False, tuple(rotted), tuple(lost))
        got = record.decode_at(buf, pos)
        if isinstance(got, record.Decoded):  # valid_run leaves flagged records to decode_at
            if got.lost:
                lost.append(pos)
        elif got is Damage.BAD_CRC and _rotted_in_place(buf, pos, sealed):
            rotted.append(pos)
        else:
            break
        positions.append(pos)
        pos = _record_end(buf, pos)
    tail_shaped = next_valid_record(buf, pos) is None
    if got is Damage.BAD_CRC and tail_shaped:
        # a whole record with a bad CRC is a tear only at the very end: at the
        # end of the file, or with only preallocated zeros after it
        end = _record_end(buf, pos)
        tail_shaped = end >= size or record.zero_from(buf, end)
    return ScanResult(positions, pos, size, got, tail_shaped, tuple(rotted), tuple(lost))


def _record_end(buf: bytes | memoryview | mmap.mmap, pos: int) -> int:
    length = int.from_bytes(buf[pos : pos + 4], "little") & record.LENGTH_MASK
    return pos + HEADER_SIZE + length


def _rotted_in_place(buf: bytes | memoryview | mmap.mmap, pos: int, sealed: bool) -> bool:
    """A whole record failing its CRC at `pos` is rot kept in place (not a
    tear) when a record that decodes starts right after it, or when it ends
    a sealed segment exactly. Anything else (two bad records in a row, a bad
    length field) cannot be placed with certainty: the caller refuses it."""
    end = _record_end(buf, pos)
    if end == len(buf):
        return sealed and not _chain_inside(buf, pos, end)
    return (
        end < len(buf)
        and isinstance(record.decode_at(buf, end), record.Decoded)
        and not _chain_inside(buf, pos, end)
    )


def _chain_inside(buf: bytes | memoryview | mmap.mmap, pos: int, end: int) -> bool:
    """Whether valid records start inside the record at `pos` and run on to
    exactly `end`: then its length field may be what rotted (a flipped bit
    that made it swallow those records), and keeping it as one record would
    drop them and move every later offset down. Only runs on damage."""
    for q in range(pos + 1, end - HEADER_SIZE + 1):
        at = q
        while at < end:
            got = record.decode_at(buf, at)
            if not isinstance(got, record.Decoded):
                break
            at = got.end
        if at == end:
            return True
    return False


def next_valid_record(buf: bytes | memoryview | mmap.mmap, pos: int) -> int | None:
    """The first byte after `pos` where a valid record starts, or None.

    An interrupted append leaves nothing valid behind the bad record. If a
    valid record follows, the damage is in the middle of the data (a flipped
    length field, say) and cutting there would lose acknowledged entries.
    Only runs on damage, so its cost (a probe per byte) is paid rarely.
    """
    size = len(buf)
    q = pos + 1
    while q <= size - HEADER_SIZE:
        if not any(buf[q : q + HEADER_SIZE]):
            # a header of zeros never validates: skip a preallocated run in C
            q = max(q + 1, record.first_nonzero(buf, q) - HEADER_SIZE + 1)
            continue
        length = int.from_bytes(buf[q : q + 4], "little") & record.LENGTH_MASK
        if q + HEADER_SIZE + length <= size and not isinstance(record.decode_at(buf, q), Damage):
            return q
        q += 1
    return None


def scan_file(path: str, *, sealed: bool = False, newest: bool = False) -> ScanResult:
    """Check a segment file. The newest: after its checkpoint's prefix if that
    still holds (wal/checkpoint.py), and with the CRC of its data."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return scan_bytes(b"")._replace(data_crc=0 if newest else None)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if not newest:
                return scan_bytes(m, sealed=sealed)
            prefix = checkpoint.load(checkpoint.path_for(path), parse_name_of(path), m)
            scan = scan_bytes(m, sealed=sealed, prefix=prefix)
            start, crc = (prefix.size, prefix.crc) if prefix is not None else (0, 0)
            with memoryview(m) as view:
                crc = crc32(view[start : scan.valid_end], crc)
            return scan._replace(data_crc=crc, checkpointed=start)


def parse_name_of(path: str) -> int:
    base = parse_name(os.path.basename(path))
    return -1 if base is None else base


class ReadRecord(NamedTuple):
    """One entry as read back from its segment."""

    payload: bytes
    crc: int  # as stored
    valid: bool  # the stored CRC matches the bytes
    lost: bool  # a lost-record marker (walctl repair): payload is what was lost
    epoch_start: int | None = None  # an epoch-start record: the epoch (payload is its 8 bytes)


class Segment:
    """One segment file and its offset index.

    Only the active segment holds a descriptor of its own. A sealed one,
    once its index file is written, is read through the log's FileCache,
    so descriptors stay bounded however many segments there are.
    """

    def __init__(
        self,
        path: str,
        base_offset: int,
        fd: int,
        positions: array | memoryview,
        size: int,
        sealed: bool,
        mapping: index.Mapping | None = None,
        files: FileCache | None = None,
    ) -> None:
        self.path = path
        self.name = os.path.basename(path)
        self.base_offset = base_offset
        self._fd = fd  # -1: read through self._files
        self._files = files if files is not None else FileCache()
        self._positions = positions  # array('Q'), or a view of the mmapped index file
        self._mapping = mapping
        self._written = size  # record bytes in the file (the data ends here)
        self._allocated = size  # the file's size: zeros past _written are preallocated
        self._staged: list[bytes] = []
        self._staged_bytes = 0
        self.sealed = sealed
        # CRC-32 of the bytes [0, _written), kept up as records are written, for
        # checkpoints (wal/checkpoint.py); None: not known, none are written
        self.data_crc: int | None = None
        self._checkpointed = 0  # the prefix bytes the newest checkpoint covers
        self._checkpointing: threading.Thread | None = None

    # -- opening ---------------------------------------------------------

    @classmethod
    def create(cls, directory: str, base_offset: int, files: FileCache | None = None) -> Segment:
        """Create a new, empty active segment. The caller fsyncs the directory."""
        path = os.path.join(directory, segment_name(base_offset))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        seg = cls(path, base_offset, fd, array("Q"), 0, sealed=False, files=files)
        seg.data_crc = 0
        return seg

    @classmethod
    def adopt(
        cls, directory: str, base_offset: int, prepared: Prepared, files: FileCache | None = None
    ) -> Segment:
        """The new active segment made from a prepared file (wal/prefill.py): renamed
        to its name, every byte of it durable zeros already, so no write needs room
        made first. The caller fsyncs the directory."""
        path = os.path.join(directory, segment_name(base_offset))
        os.rename(prepared.path, path)
        seg = cls(path, base_offset, prepared.fd, array("Q"), 0, sealed=False, files=files)
        seg._allocated = prepared.size
        seg.data_crc = 0
        return seg

    @classmethod
    def open_checked(
        cls,
        path: str,
        base_offset: int,
        *,
        last: bool,
        writable: bool,
        files: FileCache | None = None,
    ) -> tuple[Segment, ScanResult]:
        """Open a segment and check every record.

        A whole record that fails its CRC in place is kept (ScanResult.rotted:
        the caller reports it; reads return it as invalid). Other damage in a
        sealed segment, or damage in the last one that is not shaped like an
        interrupted append, raises CorruptionError. A torn tail of the last
        segment is left for the caller to cut.
        """
        scan = scan_file(path, sealed=not last, newest=last)
        if scan.damage is not None and not (last and scan.tail_shaped):
            raise CorruptionError(path, scan.valid_end, _refusal(scan))
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        seg = cls(path, base_offset, fd, scan.positions, scan.valid_end, not last, files=files)
        seg.data_crc = scan.data_crc
        seg._checkpointed = scan.checkpointed
        if scan.damage is None:
            seg._allocated = scan.file_size  # a zero tail is room already made
        return seg, scan

    @classmethod
    def open_indexed(
        cls, path: str, base_offset: int, *, files: FileCache | None = None
    ) -> Segment | None:
        """Open a sealed segment through its index file, reading none of its records
        and holding no descriptor (reads go through `files`).

        None if the index is missing, damaged, or records another size than
        the segment has: the caller then checks the segment with open_checked.
        """
        size = os.stat(path).st_size
        loaded = index.load(index.index_path(path), base_offset, size)
        if loaded is None:
            return None
        return cls(path, base_offset, -1, loaded.positions, size, True, loaded.mapping, files)

    def write_index(self, *, sync_dir: bool = True) -> bool:
        """Store this sealed segment's offset index in its index file, then read
        positions from there instead of memory. False if it could not be
        written (a full disk, say): nothing is lost but the next open's time.
        sync_dir=False: the caller fsyncs the directory next (a roll, with the
        new segment's entry)."""
        if not self.sealed:
            raise WalError(f"segment {self.name} is active: its index still grows")
        self._cut_to_data()
        self.sync()  # the index must never be durable before the records it points at
        self._release_fd()  # a sealed segment is read through the FileCache from now on
        path = index.index_path(self.path)
        if not index.write(path, self.base_offset, self._positions, self.size, sync_dir=sync_dir):
            return False
        loaded = index.load(path, self.base_offset, self.size)
        if loaded is not None:
            self._release_positions()
            self._positions, self._mapping = loaded
        return True

    @property
    def fd(self) -> int:
        """The descriptor to read (or sync) this segment through."""
        return self._fd if self._fd >= 0 else self._files.fd(self.path)

    def _release_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def drop_from(self, nth: int) -> None:
        """Remove the segment's entries from its `nth` on, durably (ftruncate,
        fsync): a replicated log cutting a suffix its leader does not have."""
        if self.sealed:
            raise WalError(f"segment {self.name} is sealed")
        self.flush()
        positions = self._positions
        assert isinstance(positions, array)  # not sealed: an in-memory index
        self._written = self.bytes_before(nth)
        del positions[nth:]
        os.ftruncate(self._fd, self._written)
        os.fsync(self._fd)
        self._allocated = self._written  # the zeros went with the cut; the next write makes room
        # the running CRC covered the bytes cut: taken again from the file (rare)
        self.data_crc = crc32(os.pread(self._fd, self._written, 0))
        self._checkpointed = min(self._checkpointed, self._written)

    def cut_tail(self, file_size: int) -> int:
        """Cut the file back to the last valid record; returns bytes removed."""
        os.ftruncate(self._fd, self._written)
        os.fsync(self._fd)
        self._allocated = self._written
        return file_size - self._written

    def _cut_to_data(self) -> None:
        """Cut a preallocated zero tail off: a sealed segment is its records
        only. The caller's fdatasync next makes the new size durable (an index
        recording it must not reach the disk first)."""
        if self._allocated > self._written:
            os.ftruncate(self.fd, self._written)
            self._allocated = self._written

    def _preallocate(self, end: int, limit: int) -> None:
        """Zero-fill the file ahead of `end` (where the next write ends), up to
        `limit` bytes, and fsync once, so the fdatasyncs of the data written
        there change no metadata. Past `limit` (a segment over its size limit)
        or on a full disk, nothing is made: the write extends the file."""
        if end <= self._allocated or end > limit:
            return
        target = min(limit, max(end, self._allocated + PREALLOCATE_CHUNK))
        pos = self._allocated
        try:
            while pos < target:
                pos += os.pwrite(self._fd, _ZEROS[: target - pos], pos)
            os.fsync(self._fd)
        except OSError as err:
            if err.errno not in DISK_FULL_ERRNOS:
                raise
            os.ftruncate(self._fd, self._allocated)  # zeros only: no sync needed
            return
        self._allocated = target

    # -- writing ---------------------------------------------------------

    @property
    def entries(self) -> int:
        return len(self._positions)

    @property
    def next_offset(self) -> int:
        return self.base_offset + len(self._positions)

    @property
    def size(self) -> int:
        """Record bytes in this segment, staged ones included."""
        return self._written + self._staged_bytes

    def stage(self, data: bytes) -> None:
        """Queue one encoded record; it reaches the file at the next flush."""
        if self.sealed:
            raise WalError(f"segment {self.name} is sealed")
        positions = self._positions
        assert isinstance(positions, array)  # only a sealed segment's are a mapped view
        positions.append(self._written + self._staged_bytes)
        self._staged.append(data)
        self._staged_bytes += len(data)

    def flush(self, preallocate_to: int = 0) -> None:
        """Write every staged record with one write call (no fsync), first
        zero-filling the file ahead of them up to `preallocate_to` bytes."""
        if not self._staged:
            return
        data = self._staged[0] if len(self._staged) == 1 else b"".join(self._staged)
        self._preallocate(self._written + len(data), preallocate_to)
        os.lseek(self._fd, self._written, os.SEEK_SET)
        try:
            write_all(self._fd, data)
        except OSError as err:
            self._drop_staged()
            if err.errno not in DISK_FULL_ERRNOS:
                raise
            # A short write may have left part of the batch, even whole valid
            # records: cut it off and make the cut durable, or a power loss
            # could bring back entries their clients were told are not written.
            os.ftruncate(self._fd, self._written)
            os.fdatasync(self._fd)
            self._allocated = self._written
            raise DiskFull(f"no space left appending to {self.path}: {err.strerror}") from None
        self._written += len(data)
        self._allocated = max(self._allocated, self._written)
        if self.data_crc is not None:
            self.data_crc = crc32(data, self.data_crc)
        self._staged.clear()
        self._staged_bytes = 0

    def _drop_staged(self) -> None:
        assert isinstance(self._positions, array)  # not sealed: staged records exist
        del self._positions[len(self._positions) - len(self._staged) :]
        self._staged.clear()
        self._staged_bytes = 0

    def sync(self) -> None:
        """fdatasync the file. A failure propagates: it is never retried."""
        os.fdatasync(self.fd)

    def checkpoint(self) -> None:
        """Once the written (and, the caller says, fdatasynced) records grew
        checkpoint.EVERY_BYTES past the last checkpoint, store their positions
        in a background thread (the positions are copied first: one memcpy)."""
        if (
            self.data_crc is None
            or self._staged
            or self._written - self._checkpointed < checkpoint.EVERY_BYTES
            or (self._checkpointing is not None and self._checkpointing.is_alive())
        ):
            return
        assert isinstance(self._positions, array)  # the active segment's, in memory
        args = (checkpoint.path_for(self.path), self.base_offset, self._positions[:])
        self._checkpointing = threading.Thread(
            target=checkpoint.write, args=(*args, self._written, self.data_crc), daemon=True
        )
        self._checkpointing.start()
        self._checkpointed = self._written

    def _checkpoint_done(self) -> None:
        if self._checkpointing is not None:
            self._checkpointing.join()
            self._checkpointing = None

    def seal(self) -> None:
        """Flush and fsync; the segment takes no more writes."""
        self.flush()
        self._cut_to_data()
        self.sync()
        self.sealed = True

    def close(self) -> None:
        self._checkpoint_done()
        self._release_fd()
        self._files.forget(self.path)
        self._release_positions()

    def _release_positions(self) -> None:
        if self._mapping is not None:
            index.release(self._positions, self._mapping)
            self._mapping = None

    # -- reading ---------------------------------------------------------

    def _span(self, nth: int) -> tuple[int, int]:
        """The byte range of the segment's `nth` entry (0 is its first)."""
        start = self._positions[nth]
        end = self._positions[nth + 1] if nth + 1 < len(self._positions) else self.size
        return start, end

    def read_range(self, first: int, count: int) -> list[ReadRecord]:
        """Read `count` entries from index `first`.

        One pread for the whole run; every record's CRC is checked again, so
        bit rot since it was written shows up as valid=False.
        """
        if self._staged:
            self.flush()
        start = self._positions[first]
        end = self._span(first + count - 1)[1]
        buf = os.pread(self.fd, end - start, start)
        out = []
        for i in range(first, first + count):
            s, e = self._span(i)
            s -= start
            e -= start
            length_bytes = buf[s : s + 4]
            length = int.from_bytes(length_bytes, "little")
            stored_crc = int.from_bytes(buf[s + 4 : s + 8], "little")
            payload = buf[s + HEADER_SIZE : e]
            valid = (
                len(buf) >= e
                and length & record.LENGTH_MASK == e - s - HEADER_SIZE
                and record.checksum(length_bytes, payload) == stored_crc
            )
            lost = bool(length & record.LOST_FLAG)
            epoch = record.epoch_of(length, payload) if valid else None
            out.append(ReadRecord(payload, stored_crc, valid, lost, epoch))
        return out

    def read_bytes(self, start: int, length: int) -> bytes:
        if self._staged:
            self.flush()
        return os.pread(self.fd, length, start)

    def positions_from(self, nth: int, start: int) -> array:
        """The positions of the entries from the `nth` on, in a file that starts at `start`."""
        return array("Q", (p - start for p in self._positions[nth:]))

    def record_bytes(self, nth: int) -> int:
        start, end = self._span(nth)
        return end - start

    def bytes_before(self, nth: int) -> int:
        """Record bytes of the entries before `nth` in this segment."""
        return self._positions[nth] if nth < len(self._positions) else self.size


def _refusal(scan: ScanResult) -> str:
    """Why a scan's damage cannot be kept in place, for CorruptionError."""
    assert scan.damage is not None  # asked only of a scan that stopped at damage
    if scan.damage is Damage.BAD_CRC:
        return (
            f"{scan.damage.value}, and its length field cannot be trusted (the record "
            f"after it does not decode, or valid records start inside it), so the "
            f"offsets after it cannot be placed"
        )
    return (
        f"{scan.damage.value}: a damaged length field, or a sealed segment cut short; "
        f"the entries from here on cannot be placed at their offsets"
    )
