"""The record: `[u32 length][u32 crc][payload]`, little-endian.

`crc` is CRC-32 (zlib) over the four length bytes followed by the payload,
so a zero-filled region never reads as a valid record (crc32 of four zero
bytes is 0x2144df1c, not 0). See docs/FORMAT.md.
"""

from __future__ import annotations

import mmap
import re
import struct
from array import array
from enum import Enum
from typing import NamedTuple

# zlib's CRC-32, by ISA-L: the same values at ~0.6x zlib's cost on a ~100-byte
# record and ~0.1x on a batch's 64 KiB (every append pays it, and every start)
from isal.isal_zlib import crc32

HEADER = struct.Struct("<II")
HEADER_SIZE = HEADER.size  # 8
# A length field with this bit set marks a *lost* record: `walctl repair` put
# it where a record had rotted, so that the offset stays taken and says what
# was lost. Payloads are far below 2 GiB, so no ordinary record has the bit.
LOST_FLAG = 0x8000_0000
# A length field with this bit set marks an *epoch-start* record: a replicated
# log's leader writes one as the first record of its epoch (docs/REPLICATION.md).
# Its payload is the epoch, u64 LE; it takes an offset and holds no client data.
EPOCH_FLAG = 0x4000_0000
LENGTH_MASK = 0x3FFF_FFFF  # the length bits of the length field
EPOCH = struct.Struct("<Q")
# A segment is zero-filled ahead of its data (preallocated, docs/FORMAT.md):
# the data ends at the first header of zeros, which never validates.
_NONZERO = re.compile(rb"[^\x00]")


def encode(payload: bytes) -> tuple[bytes, int]:
    """Return the record bytes for `payload` and its CRC."""
    length = len(payload).to_bytes(4, "little")
    crc = crc32(payload, crc32(length))
    return length + crc.to_bytes(4, "little") + payload, crc


def checksum(length_bytes: bytes, payload: bytes) -> int:
    """The CRC a record with these length bytes and payload must carry."""
    return crc32(payload, crc32(length_bytes))


def crc_hex(crc: int) -> str:
    """The CRC as the protocol prints it: 8 lowercase hex digits."""
    return f"{crc:08x}"


def encode_lost(text: bytes) -> bytes:
    """A lost-record marker: the header with LOST_FLAG in the length, then
    `text` (what was lost, UTF-8). Its CRC is computed like any record's."""
    length = (LOST_FLAG | len(text)).to_bytes(4, "little")
    return length + checksum(length, text).to_bytes(4, "little") + text


def encode_epoch_start(epoch: int) -> tuple[bytes, int]:
    """An epoch-start record: EPOCH_FLAG in the length, the epoch as u64 LE."""
    body = EPOCH.pack(epoch)
    length = (EPOCH_FLAG | len(body)).to_bytes(4, "little")
    crc = checksum(length, body)
    return length + crc.to_bytes(4, "little") + body, crc


def epoch_of(length_field: int, payload: bytes) -> int | None:
    """The epoch an epoch-start record carries; None for any other record (or a
    flagged one whose payload is not 8 bytes: it cannot be one)."""
    if length_field & EPOCH_FLAG and not length_field & LOST_FLAG and len(payload) == EPOCH.size:
        return int(EPOCH.unpack(payload)[0])
    return None


class Damage(Enum):
    """Why a record could not be decoded."""

    INCOMPLETE_HEADER = "incomplete record header"
    INCOMPLETE_PAYLOAD = "record extends past the end of the file"
    BAD_CRC = "record checksum mismatch"


class Decoded(NamedTuple):
    payload_start: int
    length: int
    crc: int
    end: int
    lost: bool = False  # a marker of a lost record (LOST_FLAG), its payload the loss's text
    epoch_start: int | None = None  # an epoch-start record (EPOCH_FLAG): the epoch it starts


def valid_run(buf: bytes | memoryview | mmap.mmap, pos: int, positions: array) -> int:
    """Append the start of every valid record from `pos` on to `positions`;
    return where the first one that does not decode starts (or the end).

    The checks of decode_at, in one loop without a call or a tuple per
    record: recovery runs this over the whole newest segment, and the loop
    is its cost. decode_at then says why a record did not decode.
    """
    size = len(buf)
    view = memoryview(buf)  # slices of a view do not copy
    unpack = HEADER.unpack_from
    crc_of = crc32  # a local: the loop's lookups
    append = positions.append
    length_crcs: dict[int, int] = {}  # CRC of the four length bytes, by length
    limit = size - HEADER_SIZE
    try:
        while pos <= limit:
            length, crc = unpack(view, pos)
            end = pos + HEADER_SIZE + length
            seed = length_crcs.get(length)
            if seed is None:
                seed = length_crcs[length] = crc_of(length.to_bytes(4, "little"))
            if end > size or crc_of(view[pos + HEADER_SIZE : end], seed) != crc:
                break
            append(pos)
            pos = end
    finally:
        view.release()  # an mmap cannot close while a view of it lives
    return pos


def decode_at(buf: bytes | memoryview | mmap.mmap, pos: int) -> Decoded | Damage:
    """Decode the record starting at `pos` of `buf` (a whole file's bytes)."""
    size = len(buf)
    if pos + HEADER_SIZE > size:
        return Damage.INCOMPLETE_HEADER
    field, crc = HEADER.unpack_from(buf, pos)
    length = field & LENGTH_MASK
    start = pos + HEADER_SIZE
    end = start + length
    if end > size:
        return Damage.INCOMPLETE_PAYLOAD
    if crc32(buf[start:end], crc32(buf[pos : pos + 4])) != crc:
        return Damage.BAD_CRC
    epoch = epoch_of(field, bytes(buf[start:end])) if field & EPOCH_FLAG else None
    return Decoded(start, length, crc, end, bool(field & LOST_FLAG), epoch)


def first_nonzero(buf: bytes | memoryview | mmap.mmap, pos: int) -> int:
    """The first byte from `pos` on that is not zero, or len(buf): zeros are
    what preallocation wrote past the data (scanned in C, not per byte)."""
    found = _NONZERO.search(buf, pos)
    return len(buf) if found is None else found.start()


def zero_from(buf: bytes | memoryview | mmap.mmap, pos: int) -> bool:
    """True if every byte from `pos` on is zero: preallocated room, not data."""
    return first_nonzero(buf, pos) == len(buf)
