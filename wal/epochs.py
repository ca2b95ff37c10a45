"""The epoch checkpoint of a replicated log: `DIR/wal/EPOCHS` (docs/FORMAT.md).

One line per epoch that has entries in the log, `EPOCH START_OFFSET\\n` in
ASCII decimal, ascending by both: every entry from START_OFFSET on (up to the
next line's) has epoch EPOCH. As Kafka's leader-epoch checkpoint, it keeps the
record format as it is: the epoch of an entry is found here, not in its record.
The file is replaced whole with `atomic_write`, and written before the first
entry of a new epoch is appended, so an entry on disk always has its line.
A single-node data directory has no such file.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass

from wal.errors import CorruptionError
from wal.fsutil import atomic_write

EPOCHS_NAME = "EPOCHS"


@dataclass(frozen=True, order=True, slots=True)
class EpochStart:
    """Entries from `start` on have `epoch` (until the next line's start)."""

    start: int
    epoch: int


def epochs_path(wal_dir: str) -> str:
    return os.path.join(wal_dir, EPOCHS_NAME)


def read(wal_dir: str) -> list[EpochStart] | None:
    """The lines of `wal_dir`'s EPOCHS file; None if there is none."""
    path = epochs_path(wal_dir)
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    lines: list[EpochStart] = []
    rows = text.split(b"\n")
    for n, line in enumerate(rows[:-1]):  # a whole file ends with a newline
        parts = line.split(b" ")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise CorruptionError(
                path,
                None,
                f"line {n + 1} is {line[:40]!r}, not 'EPOCH START_OFFSET' in decimal; the file "
                f"is replaced atomically, so this is damage from outside walnode",
            )
        got = EpochStart(int(parts[1]), int(parts[0]))
        if lines and not (got.start > lines[-1].start and got.epoch > lines[-1].epoch):
            raise CorruptionError(
                path, None, f"line {n + 1} ({line.decode()}) does not follow the line before it"
            )
        lines.append(got)
    if rows[-1]:
        raise CorruptionError(path, None, "it does not end with a newline (cut short)")
    return lines


def write(wal_dir: str, lines: list[EpochStart]) -> None:
    """Replace the EPOCHS file with `lines`, durably (temp, fsync, rename, dir fsync)."""
    text = "".join(f"{line.epoch} {line.start}\n" for line in lines)
    atomic_write(epochs_path(wal_dir), text.encode())


def epoch_at(lines: list[EpochStart], offset: int) -> int:
    """The epoch of the entry at `offset`: the last line starting at or before
    it, or 0 when none does (entries before any epoch: a single node's)."""
    i = bisect.bisect_right(lines, EpochStart(offset, 1 << 63)) - 1
    return lines[i].epoch if i >= 0 else 0


def snapshot_epoch(wal_dir: str, last: int) -> int | None:
    """The epoch a snapshot whose last entry is `last` records: None without an
    EPOCHS file (a single node's snapshots stay in their old format)."""
    lines = read(wal_dir)
    return None if lines is None else epoch_at(lines, last)
