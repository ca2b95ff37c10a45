"""Changes made to a stopped walnode's data directory between two runs of a
differential session (session.Damage): the same change is made to the
reference's and the candidate's directory, found by entry offset (not by a
byte position), so two layouts that hold the same records get the same damage.

Actions (`name:arg`):
    flip_entry:N     XOR the first payload byte (the CRC's if the payload is empty)
                     of entry N's record: rot, the record fails its CRC
    flip_length:N    XOR the low byte of entry N's length field
    cut_tail:K       cut the newest segment K bytes before its data's end (a torn
                     last record; K larger than the last record cuts into earlier ones)
    zero_tail:K      overwrite the newest segment's last K data bytes with zeros
    extra:delete     every file or directory main does not keep in a data
    extra:truncate   directory (main: LOCK, walnode.meta, wal/, snapshots/; and
    extra:garble     in wal/ and snapshots/ only main's names): removed, cut to
    extra:zero       half its size, its middle bytes flipped, or zeroed. On
                     main's directory a no-op: a branch's own files (a state
                     store, a prepared segment) must be a cache of the log
    snapshots:delete every snapshot removed
    snapshots:garble the newest snapshot's middle byte flipped
    repair           `walctl repair --yes DIR` with the node's own walctl
"""

from __future__ import annotations

import os
import shutil
import subprocess

from wal.record import HEADER_SIZE
from wal.segment import parse_name, scan_file

MAIN_TOP = {"LOCK", "walnode.meta", "wal", "snapshots"}
_SNAP_SUFFIX = ".snap"


def flip_byte(path: str, position: int, mask: int = 0xFF) -> None:
    """XOR one byte of `path` with `mask`, in place (tests/damage.py uses it too)."""
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ mask]))


def segments(data_dir: str) -> list[tuple[int, str]]:
    wal = os.path.join(data_dir, "wal")
    return sorted(
        (b, os.path.join(wal, n)) for n in os.listdir(wal) if (b := parse_name(n)) is not None
    )


def record_position(data_dir: str, offset: int) -> tuple[str, int, int]:
    """(file, start byte, record length) of entry `offset`'s record."""
    segs = segments(data_dir)
    for i, (base, path) in enumerate(segs):
        nxt = segs[i + 1][0] if i + 1 < len(segs) else None
        if base <= offset and (nxt is None or offset < nxt):
            scan = scan_file(path, sealed=nxt is not None)
            positions = scan.positions.tolist() + [scan.valid_end]
            n = offset - base
            if n + 1 >= len(positions):
                raise ValueError(f"entry {offset} is not in {path}")
            return path, positions[n], positions[n + 1] - positions[n]
    raise ValueError(f"no segment holds entry {offset}")


def _newest_data_end(data_dir: str) -> tuple[str, int]:
    path = segments(data_dir)[-1][1]
    return path, scan_file(path).valid_end


def extra_paths(data_dir: str) -> list[str]:
    """What main would not have put in `data_dir`: a branch's own files."""
    found = [os.path.join(data_dir, n) for n in os.listdir(data_dir) if n not in MAIN_TOP]
    wal = os.path.join(data_dir, "wal")
    for name in os.listdir(wal):
        stem = name.removesuffix(".idx").removesuffix(".ckpt")
        if parse_name(stem) is None:
            found.append(os.path.join(wal, name))
    snaps = os.path.join(data_dir, "snapshots")
    for name in os.listdir(snaps):
        if not name.endswith(_SNAP_SUFFIX):
            found.append(os.path.join(snaps, name))
    return sorted(found)


def _files_under(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    out = []
    for root, _, names in os.walk(path):
        out += [os.path.join(root, n) for n in names]
    return sorted(out)


def _on_extra(data_dir: str, how: str) -> list[str]:
    touched = []
    for path in extra_paths(data_dir):
        if how == "delete":
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            touched.append(path)
            continue
        for file in _files_under(path):
            size = os.path.getsize(file)
            if how == "truncate":
                os.truncate(file, size // 2)
            elif how == "garble" and size:
                for at in {size // 2, size // 3, (2 * size) // 3}:
                    flip_byte(file, at)
            elif how == "zero" and size:
                with open(file, "r+b") as f:
                    f.write(b"\0" * size)
            touched.append(file)
    return touched


def apply(action: str, data_dir: str, node_py: str, python: str) -> str:
    """Make the change; a line saying what was done (compared between the two nodes
    only where it is the same for both: see the caller)."""
    name, _, arg = action.partition(":")
    if name == "flip_entry":
        path, pos, length = record_position(data_dir, int(arg))
        flip_byte(path, pos + HEADER_SIZE if length > HEADER_SIZE else pos + 4)
        return f"flipped entry {arg}"
    if name == "flip_length":
        path, pos, _ = record_position(data_dir, int(arg))
        flip_byte(path, pos, 0x01)
        return f"flipped entry {arg}'s length"
    if name == "cut_tail":
        path, end = _newest_data_end(data_dir)
        os.truncate(path, max(0, end - int(arg)))
        return f"cut {arg} bytes"
    if name == "zero_tail":
        path, end = _newest_data_end(data_dir)
        with open(path, "r+b") as f:
            f.seek(max(0, end - int(arg)))
            f.write(b"\0" * min(end, int(arg)))
        return f"zeroed {arg} bytes"
    if name == "extra":
        return f"extra {arg}: {len(_on_extra(data_dir, arg))} touched"
    if name == "snapshots":
        snaps = os.path.join(data_dir, "snapshots")
        names = sorted(n for n in os.listdir(snaps) if n.endswith(_SNAP_SUFFIX))
        if arg == "delete":
            for n in names:
                os.unlink(os.path.join(snaps, n))
        elif names:
            path = os.path.join(snaps, names[-1])
            flip_byte(path, os.path.getsize(path) // 2)
        return f"snapshots {arg}"
    if name == "repair":
        out = subprocess.run(
            [python, "-m", "walctl", "repair", "--yes", data_dir],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(node_py)),
            timeout=120,
        )
        return f"repair exit {out.returncode}"
    raise ValueError(f"unknown damage {action!r}")
