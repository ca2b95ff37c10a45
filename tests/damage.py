"""Damaging files on purpose, for tests of what walnode does with the damage."""

from __future__ import annotations

import os

from walctl.differential.damage import flip_byte  # noqa: F401 (the tests' name for it)


def cut_to_data(path: str) -> int:
    """Cut a segment file's preallocated zero tail off, so that the file ends
    where its records do (as a writer without preallocation left it); returns
    that size. Tests that damage a segment's last bytes start from here."""
    from wal.segment import scan_file  # the tests' own helper: only this needs wal

    end = scan_file(path).valid_end
    os.truncate(path, end)
    return end
