"""A sealed segment's offset index on disk: `<base>.idx` beside `<base>.log`.

Written when a segment is sealed (and when compaction rewrites a sealed
segment), so that opening the log need not read a sealed segment's records:
the file gives every record's byte position, and it is trusted only while
its CRC holds and the segment still has the size the index recorded. It is
derived data: a missing, damaged or mismatched index is ignored, the segment
is scanned as without one and the index written again. Layout in
docs/FORMAT.md.

A loaded index is mmapped and read through a memoryview, so it costs the
process no memory per entry: the kernel pages in what reads touch. It is
mapped with libc's mmap directly, not Python's mmap module, which keeps a
duplicate of the file descriptor for as long as the mapping lives (until
Python 3.13's trackfd=False): 10,000 sealed segments must not hold 10,000
descriptors.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import re
import struct
import sys
import zlib
from array import array
from typing import NamedTuple

from wal.errors import DiskFull
from wal.fsutil import atomic_write

MAGIC = b"WNINDX\x00\x01"  # the last two bytes are the format version (1)
HEADER = struct.Struct("<8sQQQ")  # magic, base offset, entries, segment file size
CRC = struct.Struct("<I")
POSITION_SIZE = 4  # u32 LE: walnode's segments are at most 1 GiB
MAX_POSITION = 0xFFFFFFFF  # a segment with a record starting past this gets no index
SUFFIX = ".idx"
TMP_SUFFIX = ".tmp"  # atomic_write's temp file, left only by a crash mid-write
NAME_RE = re.compile(r"^(\d{20})\.idx$")
CRC_CHUNK = 1 << 20  # bytes read at a time while checking the CRC

assert array("I").itemsize == POSITION_SIZE


def index_path(segment_path: str) -> str:
    """`.../<base>.idx` for the segment `.../<base>.log`."""
    return os.path.splitext(segment_path)[0] + SUFFIX


def parse_name(name: str) -> int | None:
    """The base offset an index file name carries, or None if not an index."""
    m = NAME_RE.match(name)
    return int(m.group(1)) if m else None


class Mapping:
    """A read-only shared mapping of a whole file that holds no descriptor."""

    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.mmap.restype = ctypes.c_void_p
    _libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    FAILED = ctypes.c_void_p(-1).value

    def __init__(self, fd: int, size: int) -> None:
        addr = self._libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, self.FAILED):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self._addr, self._size = addr, size
        self.view = memoryview((ctypes.c_char * size).from_address(addr)).cast("B")

    def close(self) -> None:
        """Unmap; every view of it must have been released first."""
        if self._addr is not None:
            self.view.release()
            self._libc.munmap(self._addr, self._size)
            self._addr = None


class LoadedIndex(NamedTuple):
    positions: memoryview | array  # start byte of every record (format "I")
    mapping: Mapping | None  # the mapped file, to close once positions are released

    def close(self) -> None:
        """Unmap the file (if mapped): its positions are released first, as
        a mapping cannot close while a view of it is alive."""
        release(self.positions, self.mapping)


def release(positions: memoryview | array, mapping: Mapping | None) -> None:
    """Release a mapped index's view, then close its mapping (no-op if unmapped)."""
    if mapping is not None:
        if isinstance(positions, memoryview):
            positions.release()
        mapping.close()


def encode(base_offset: int, positions: memoryview | array, segment_size: int) -> bytes | None:
    """The index file's bytes, or None if a position does not fit in a u32."""
    if len(positions) and positions[-1] > MAX_POSITION:
        return None
    body = HEADER.pack(MAGIC, base_offset, len(positions), segment_size) + _u32_le(positions)
    return body + CRC.pack(zlib.crc32(body))


def _u32_le(positions: memoryview | array) -> bytes:
    """Positions (each below 2**32) as little-endian u32s."""
    if isinstance(positions, array) and positions.itemsize == 8 and sys.byteorder == "little":
        # the low half of every u64, gathered in C: a third of array("I", ...)'s
        # time, which a roll of millions of small records would otherwise wait for
        return memoryview(positions).cast("B").cast("I")[::2].tobytes()
    flat = array("I", positions)
    if sys.byteorder == "big":
        flat.byteswap()
    return flat.tobytes()


def write(
    path: str,
    base_offset: int,
    positions: memoryview | array,
    segment_size: int,
    *,
    sync_dir: bool = True,
) -> bool:
    """Write the index durably and atomically; False if it was not written.
    sync_dir=False: the caller fsyncs the directory right after (a roll).

    A failure is not an error (the next open scans the segment instead), so
    a full disk or a failing write costs only the index: whatever it left
    is removed and the caller goes on.
    """
    data = encode(base_offset, positions, segment_size)
    if data is None:
        return False
    try:
        atomic_write(path, data, sync_dir=sync_dir)
    except (DiskFull, OSError):
        with contextlib.suppress(OSError):
            os.remove(path + TMP_SUFFIX)
        return False
    return True


def load(path: str, base_offset: int, segment_size: int) -> LoadedIndex | None:
    """The positions stored in `path`, or None unless every check passes:
    magic and version, base offset, the segment's size, the file's length
    and the CRC over the whole file. An index that cannot be read is not
    an error either: None, and the segment is scanned instead."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        entries = _check(fd, base_offset, segment_size)
        if entries is None:
            return None
        mapping = Mapping(fd, HEADER.size + entries * POSITION_SIZE + CRC.size)
    except OSError:
        return None
    finally:
        os.close(fd)
    raw = mapping.view[HEADER.size : HEADER.size + entries * POSITION_SIZE]
    if sys.byteorder == "big":  # the file is little-endian: copy and swap
        positions = array("I", raw.tobytes())
        positions.byteswap()
        raw.release()
        mapping.close()
        return LoadedIndex(positions, None)
    return LoadedIndex(raw.cast("I"), mapping)


def _check(fd: int, base_offset: int, segment_size: int) -> int | None:
    """The entry count if the open index file passes every check, else None.

    Checked with reads, not through a mapping: pages touched through a
    mapping count in the process's RSS for as long as it stays mapped.
    """
    size = os.fstat(fd).st_size
    head = os.pread(fd, HEADER.size, 0)
    if len(head) < HEADER.size:
        return None
    magic, base, entries, recorded_size = HEADER.unpack(head)
    end = HEADER.size + entries * POSITION_SIZE
    if (magic, base, recorded_size, size) != (MAGIC, base_offset, segment_size, end + CRC.size):
        return None
    if _crc(fd, end) != CRC.unpack(os.pread(fd, CRC.size, end))[0]:
        return None
    return entries


def _crc(fd: int, length: int) -> int:
    crc = 0
    for pos in range(0, length, CRC_CHUNK):
        crc = zlib.crc32(os.pread(fd, min(CRC_CHUNK, length - pos), pos), crc)
    return crc


def remove(segment_path: str) -> None:
    """Remove the index of a segment that is deleted or cut (if it has one)."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(index_path(segment_path))
