"""The newest segment's checkpoint: `<base>.ckpt` beside `<base>.log`.

Opening the log checks the newest segment record by record (its tail may be
torn), and at 10M entries that scan was most of a writer's restart. The
writer therefore stores, now and then, the positions of the records in the
newest segment's fdatasynced prefix, with the CRC-32 of that prefix's bytes.
At open the prefix's bytes are checked against that CRC in one C call (no
per-record loop) and, if they match, its positions are taken as stored and
only the records after it are scanned. Anything else (a torn or missing
file, another base, a prefix changed since: a repair, a tail truncation, rot)
fails the check, and the segment is scanned whole as without one. Derived
data, so written without fsync: a checkpoint a power cut tore is ignored.
Layout in docs/FORMAT.md.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import sys
import zlib
from array import array
from typing import NamedTuple

MAGIC = b"WNCKPT\x00\x01"  # the last two bytes are the format version (1)
HEADER = struct.Struct("<8sQQQI")  # magic, base offset, entries, prefix bytes, prefix CRC
CRC = struct.Struct("<I")
SUFFIX = ".ckpt"
TMP_SUFFIX = ".tmp"
EVERY_BYTES = 8 << 20  # a new checkpoint once the synced prefix grew this much

assert array("Q").itemsize == 8


class Prefix(NamedTuple):
    """A verified checkpoint: the newest segment's first `size` bytes hold
    records at `positions` (a copy the segment may append to)."""

    positions: array
    size: int
    crc: int


def path_for(segment_path: str) -> str:
    """`.../<base>.ckpt` for the segment `.../<base>.log`."""
    return os.path.splitext(segment_path)[0] + SUFFIX


def parse_name(name: str) -> int | None:
    """The base offset a checkpoint (or its temp file) name carries, or None."""
    stem = name[: -len(TMP_SUFFIX)] if name.endswith(SUFFIX + TMP_SUFFIX) else name
    if not stem.endswith(SUFFIX):
        return None
    digits = stem[: -len(SUFFIX)]
    return int(digits) if len(digits) == 20 and digits.isdigit() else None


def encode(base_offset: int, positions: array, size: int, crc: int) -> bytes:
    flat = positions if sys.byteorder == "little" else _swapped(positions)
    body = HEADER.pack(MAGIC, base_offset, len(positions), size, crc) + flat.tobytes()
    return body + CRC.pack(zlib.crc32(body))


def _swapped(positions: array) -> array:
    out = array("Q", positions)
    out.byteswap()
    return out


def write(path: str, base_offset: int, positions: array, size: int, crc: int) -> None:
    """Replace the checkpoint at `path` (temp file, then rename). Not fsynced
    and never an error: a failure costs only the next open's scan."""
    tmp = path + TMP_SUFFIX
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            data = memoryview(encode(base_offset, positions, size, crc))
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def load(path: str, base_offset: int, segment: mmap.mmap | bytes) -> Prefix | None:
    """The checkpoint at `path` if it is whole, for `base_offset`, and the
    segment's bytes (`segment`) still begin with the prefix it describes."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if len(data) < HEADER.size + CRC.size or zlib.crc32(data[:-4]) != CRC.unpack(data[-4:])[0]:
        return None
    magic, base, entries, size, crc = HEADER.unpack_from(data)
    if magic != MAGIC or base != base_offset or len(data) != HEADER.size + 8 * entries + 4:
        return None
    if size > len(segment) or zlib.crc32(memoryview(segment)[:size]) != crc:
        return None  # the prefix changed since (or the file is shorter): scan it all
    positions = array("Q")
    positions.frombytes(data[HEADER.size : -4])
    if sys.byteorder == "big":
        positions.byteswap()
    if positions and positions[-1] >= size:
        return None
    return Prefix(positions, size, crc)


def remove(segment_path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path_for(segment_path))
