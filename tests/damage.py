"""Damaging files on purpose, for tests of what walnode does with the damage."""

from __future__ import annotations


def flip_byte(path: str, position: int, mask: int = 0xFF) -> None:
    """XOR one byte of `path` with `mask`, in place."""
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ mask]))
