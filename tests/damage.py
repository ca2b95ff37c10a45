"""Damaging files on purpose, for tests of what walnode does with the damage."""

from __future__ import annotations

import os


def flip_byte(path: str, position: int, mask: int = 0xFF) -> None:
    """XOR one byte of `path` with `mask`, in place."""
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ mask]))


def cut_to_data(path: str) -> int:
    """Cut a segment file's preallocated zero tail off, so that the file ends
    where its records do (as a writer without preallocation left it); returns
    that size. Tests that damage a segment's last bytes start from here."""
    from wal.segment import scan_file  # the tests' own helper: only this needs wal

    end = scan_file(path).valid_end
    os.truncate(path, end)
    return end
