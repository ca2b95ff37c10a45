"""The record: `[u32 length][u32 crc][payload]`, little-endian.

`crc` is CRC-32 (zlib) over the four length bytes followed by the payload,
so a zero-filled region never reads as a valid record (crc32 of four zero
bytes is 0x2144df1c, not 0). See docs/FORMAT.md.
"""

from __future__ import annotations

import struct
import zlib
from enum import Enum
from typing import NamedTuple

HEADER = struct.Struct("<II")
HEADER_SIZE = HEADER.size  # 8


def encode(payload: bytes) -> tuple[bytes, int]:
    """Return the record bytes for `payload` and its CRC."""
    length = len(payload).to_bytes(4, "little")
    crc = zlib.crc32(payload, zlib.crc32(length))
    return length + crc.to_bytes(4, "little") + payload, crc


def checksum(length_bytes: bytes, payload: bytes) -> int:
    """The CRC a record with these length bytes and payload must carry."""
    return zlib.crc32(payload, zlib.crc32(length_bytes))


def crc_hex(crc: int) -> str:
    """The CRC as the protocol prints it: 8 lowercase hex digits."""
    return f"{crc:08x}"


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


def decode_at(buf: bytes | memoryview, pos: int) -> Decoded | Damage:
    """Decode the record starting at `pos` of `buf` (a whole file's bytes)."""
    size = len(buf)
    if pos + HEADER_SIZE > size:
        return Damage.INCOMPLETE_HEADER
    length, crc = HEADER.unpack_from(buf, pos)
    start = pos + HEADER_SIZE
    end = start + length
    if end > size:
        return Damage.INCOMPLETE_PAYLOAD
    if zlib.crc32(buf[start:end], zlib.crc32(buf[pos : pos + 4])) != crc:
        return Damage.BAD_CRC
    return Decoded(start, length, crc, end)
