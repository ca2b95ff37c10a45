"""Snapshots of the state machine: one file each, written atomically.

    DIR/snapshots/00000000000000000500.snap   covers every entry below 500

Layout (docs/FORMAT.md):
    magic    8 bytes   b"WNSNAP\\x00\\x01" (the last two bytes: format version 1)
    offset   u64 LE    entries below this offset are folded in
    length   u64 LE    body length
    body     msgpack map {key: value} (str -> str)
    crc      u32 LE    CRC-32 (zlib) of every byte before it

A state that depends on damaged entries (records that failed their CRC, or
lost-record markers) is written as version 2 instead: the body is the map
{"state": {...}, "damaged": [offsets], "rewritten": [keys set or deleted
since the last damaged offset]}, so a snapshot never silently skips one.

A replica's snapshot (docs/REPLICATION.md) also records the epoch of its
last entry (offset - 1): version 3, body {"state": {...}, "damaged": [...],
"rewritten": [...], "epoch": E}. A snapshot without an epoch is written as
version 1 or 2 exactly as before; every version is read.

Written to `<name>.tmp`, fsynced, renamed into place, the directory fsynced:
a crash leaves the old set of snapshots or the new one. A large one is
written in pieces, each piece's writeback started as it is written, so the
final fsync never puts a whole large file in the disk's queue at once,
ahead of the writer's fdatasyncs. A file that fails
any check is never loaded; the loader falls back to the one before.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import msgpack

from wal import faults
from wal.fsutil import disk_full_undone, fsync_dir, make_dirs, sync_range, write_all

MAGIC = b"WNSNAP\x00\x01"
MAGIC_DAMAGED = b"WNSNAP\x00\x02"  # version 2: the state with its damaged offsets
MAGIC_EPOCH = b"WNSNAP\x00\x03"  # version 3: version 2's fields and the last entry's epoch
HEAD = struct.Struct("<8sQQ")
CRC = struct.Struct("<I")
NAME_RE = re.compile(r"^(\d{20})\.snap$")
T = TypeVar("T")
# A snapshot is written PIECE_BYTES at a time: after each piece its writeback
# is started and the previous piece's waited for (sync_file_range), so at most
# about two pieces are ever in flight to the disk, and the fsync that makes
# the file durable has at most one piece left to write.
PIECE_BYTES = 4 << 20


@dataclass(frozen=True)
class Damage:
    """What a state machine could not apply, carried in a version 2 snapshot."""

    damaged: tuple[int, ...] = ()  # offsets whose records could not be read
    rewritten: frozenset[str] = frozenset()  # keys set or deleted since the last damaged one


@dataclass(frozen=True)
class Snapshot:
    offset: int
    state: dict[str, str]
    path: str
    size_bytes: int
    damage: Damage = Damage()
    epoch: int | None = None  # the epoch of the entry at offset - 1 (a replica's; version 3)


def snapshot_name(offset: int) -> str:
    return f"{offset:020d}.snap"


def list_offsets(directory: str) -> list[int]:
    """Offsets of the snapshot files in place (renamed in, so once complete), ascending."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := NAME_RE.match(n)))


def encode(
    offset: int, state: dict[str, str], damage: Damage | None = None, epoch: int | None = None
) -> bytes:
    return encode_packed(offset, msgpack.packb(state, use_bin_type=True), damage, epoch)


def pack_state(chunks: Iterable[Sequence[tuple[str, str]] | Mapping[str, str]]) -> bytes:
    """The msgpack map of a state given as chunks of distinct keys, each
    (key, value) pairs or a dict (a store read a chunk at a time, or held
    in memory), as msgpack.packb of the whole dict would pack it up to the
    order of its items: one header for the count, then each chunk's items
    packed in C (its dict's header cut off)."""
    parts, count = [b""], 0
    for chunk in chunks:
        packed = msgpack.packb(chunk if type(chunk) is dict else dict(chunk), use_bin_type=True)
        parts.append(packed[_map_header_size(len(chunk)) :])
        count += len(chunk)
    packer = msgpack.Packer(use_bin_type=True)
    parts[0] = packer.pack_map_header(count)
    return b"".join(parts)


def _map_header_size(n: int) -> int:
    return 1 if n < 16 else 3 if n < 1 << 16 else 5  # fixmap, map 16, map 32


def encode_packed(
    offset: int, packed_state: bytes, damage: Damage | None = None, epoch: int | None = None
) -> bytes:
    """encode, with the state already packed (a msgpack map)."""
    if epoch is not None or (damage is not None and damage.damaged):
        damage = damage or Damage()
        magic = MAGIC_DAMAGED if epoch is None else MAGIC_EPOCH
        fields: dict[str, object] = {
            "damaged": list(damage.damaged),
            "rewritten": sorted(damage.rewritten),
        }
        if epoch is not None:
            fields["epoch"] = epoch
        pack = msgpack.Packer(use_bin_type=True).pack
        # msgpack.packb({"state": state, **fields}), its state packed already
        head = msgpack.Packer(use_bin_type=True).pack_map_header(len(fields) + 1)
        body = b"".join([head, pack("state"), packed_state, *map(pack, _flat(fields))])
    else:
        magic, body = MAGIC, packed_state
    data = HEAD.pack(magic, offset, len(body)) + body
    return data + CRC.pack(zlib.crc32(data))


def _flat(fields: dict[str, object]) -> Iterator[object]:
    for key, value in fields.items():
        yield key
        yield value


def decode(data: bytes) -> tuple[int, dict[str, str]]:
    """Check and decode a snapshot file's bytes; ValueError says what is wrong."""
    offset, state, _ = decode_with_damage(data)
    return offset, state


def decode_with_damage(data: bytes) -> tuple[int, dict[str, str], Damage]:
    """decode, and the damaged offsets a version 2 snapshot carries."""
    offset, state, damage, _ = decode_all(data)
    return offset, state, damage


def check(data: bytes) -> tuple[bytes, int, int]:
    """A snapshot file's (magic, offset, body length), its size, magic and CRC
    checked, its body not decoded; ValueError says what is wrong."""
    if len(data) < HEAD.size + CRC.size:
        raise ValueError(f"too short ({len(data)} bytes)")
    magic, offset, length = HEAD.unpack_from(data)
    if magic not in (MAGIC, MAGIC_DAMAGED, MAGIC_EPOCH):
        raise ValueError(f"bad magic {magic!r}")
    if HEAD.size + length + CRC.size != len(data):
        raise ValueError(f"body length {length} does not match the file size {len(data)}")
    (crc,) = CRC.unpack_from(data, len(data) - CRC.size)
    if zlib.crc32(memoryview(data)[: -CRC.size]) != crc:
        raise ValueError("checksum mismatch")
    return magic, offset, length


def decode_all(data: bytes) -> tuple[int, dict[str, str], Damage, int | None]:
    """decode_with_damage, and the epoch a version 3 snapshot carries (else None)."""
    magic, offset, length = check(data)
    state = msgpack.unpackb(data[HEAD.size : HEAD.size + length], raw=False)
    if not isinstance(state, dict):
        raise ValueError("body is not a map")
    if magic == MAGIC:
        return offset, state, Damage(), None
    try:
        damage = Damage(tuple(state["damaged"]), frozenset(state["rewritten"]))
        epoch = state["epoch"] if magic == MAGIC_EPOCH else None
        if epoch is not None and not (isinstance(epoch, int) and epoch >= 0):
            raise TypeError(f"epoch {epoch!r} is not an integer >= 0")
        return offset, state["state"], damage, epoch
    except (KeyError, TypeError) as err:
        raise ValueError(f"a version {magic[-1]} body without its fields: {err}") from None


def write(
    directory: str,
    offset: int,
    state: dict[str, str],
    damage: Damage | None = None,
    epoch: int | None = None,
) -> Snapshot:
    """Write a snapshot durably: temp file, fsync, rename, fsync the directory."""
    snap = write_encoded(directory, offset, encode(offset, state, damage, epoch), damage, epoch)
    return dataclasses.replace(snap, state=state)


def write_encoded(
    directory: str, offset: int, data: bytes, damage: Damage | None, epoch: int | None
) -> Snapshot:
    """write, of a snapshot encoded already (encode_packed); its Snapshot's
    state is left empty (the caller has it elsewhere: a state store)."""
    make_dirs(directory)
    path = os.path.join(directory, snapshot_name(offset))
    tmp = path + ".tmp"
    faults.point("snapshot.before_temp")
    with disk_full_undone(tmp):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_in_pieces(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    faults.point("snapshot.after_temp")
    os.rename(tmp, path)
    faults.point("snapshot.after_rename")
    fsync_dir(directory)
    faults.point("snapshot.after_dir_fsync")
    return Snapshot(offset, {}, path, len(data), damage or Damage(), epoch)


def _write_in_pieces(fd: int, data: bytes) -> None:
    """Write `data` PIECE_BYTES at a time (and cut at its middle, for the
    failpoint), starting each piece's writeback and waiting for the previous
    piece's. Not a durability step: the caller's fsync is."""
    half = len(data) // 2
    cuts = sorted({*range(0, len(data), PIECE_BYTES), half, len(data)})
    previous: tuple[int, int] | None = None
    for start, end in zip(cuts, cuts[1:], strict=False):
        write_all(fd, data[start:end])
        if end == half:
            faults.point("snapshot.half_written")
        sync_range(fd, start, end - start, wait=False)
        if previous is not None:
            sync_range(fd, *previous, wait=True)
        previous = (start, end - start)


def load_latest(directory: str) -> tuple[Snapshot | None, list[str]]:
    """The newest snapshot that passes every check, and a note per file skipped.

    A file that fails is renamed to `<name>.corrupt`: kept for a person to
    look at, never listed, loaded or counted as a snapshot again.
    """

    def load(offset: int, path: str, data: bytes) -> Snapshot:
        got_offset, state, damage, epoch = decode_all(data)
        _named(offset, got_offset)
        return Snapshot(offset, state, path, len(data), damage, epoch)

    return _newest_passing(directory, load)


def newest_offset(directory: str) -> tuple[int | None, list[str]]:
    """The offset of the newest snapshot that passes every check but the
    body's decoding (size, magic, length, CRC, offset matching the name),
    and a note per file skipped (moved aside as load_latest does): what a
    start from the state store needs, since compaction is allowed up to it,
    without building its state (one read and CRC pass, no msgpack)."""

    def offset_of(offset: int, _path: str, data: bytes) -> int:
        _named(offset, check(data)[1])
        return offset

    return _newest_passing(directory, offset_of)


def _named(offset: int, got_offset: int) -> None:
    if got_offset != offset:
        raise ValueError(f"holds offset {got_offset}, not the {offset} of its name")


def _newest_passing(
    directory: str, read: Callable[[int, str, bytes], T]
) -> tuple[T | None, list[str]]:
    """`read` of the newest snapshot file it does not raise ValueError (or
    msgpack's) on, and a note per file skipped, each moved aside to
    `<name>.corrupt` (the directory fsynced)."""
    skipped: list[str] = []
    for offset in reversed(list_offsets(directory)):
        path = os.path.join(directory, snapshot_name(offset))
        try:
            with open(path, "rb") as f:
                data = f.read()
            return read(offset, path, data), skipped
        except (OSError, ValueError, msgpack.UnpackException) as err:
            skipped.append(f"skipped snapshot {path}: {err}; moved aside to {path}.corrupt")
            os.rename(path, path + ".corrupt")
            fsync_dir(directory)
    return None, skipped


def remove_temp_files(directory: str) -> list[str]:
    """Remove `*.snap.tmp` left by a crash while a snapshot was written."""
    try:
        names = [n for n in os.listdir(directory) if n.endswith(".snap.tmp")]
    except FileNotFoundError:
        return []
    for name in names:
        os.remove(os.path.join(directory, name))
    if names:
        fsync_dir(directory)
    return names


def prune(directory: str, keep: int) -> list[str]:
    """Remove all but the newest `keep` snapshots. Only called right after a
    new snapshot is durable, never at recovery: there the newest files may
    be the damaged ones, and an older one the only fallback."""
    removed = []
    offsets = list_offsets(directory)
    for offset in offsets[: max(0, len(offsets) - keep)]:
        removed.append(snapshot_name(offset))
        os.remove(os.path.join(directory, snapshot_name(offset)))
        faults.point("snapshot.pruning")
    if removed:
        fsync_dir(directory)
    return removed
