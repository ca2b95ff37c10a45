"""Which files make up the log: one decision, for Log.open and `walctl verify` alike.

A power cut can leave a directory in the middle of a multi-file step:

- a committed compaction (LOG_START written) whose rewrite is not renamed in
  yet, or whose old segments are not deleted yet;
- a rewrite whose compaction never committed;
- a roll by an older walnode, which created the new segment before the old
  one was fdatasynced: the new, empty file's directory entry reached the
  disk while the old segment's unsynced tail did not, so the newest segment
  starts past the end of the one before it (an *interrupted roll*);
- a next segment prepared ahead (`next.prefill`, wal/prefill.py), whole or
  cut short, that no roll took: removed. (One a roll renamed is a newest
  segment of zeros: an empty segment with room made.)

`plan` reads the directory, changes nothing, and says which segments the log
is made of and what start-up settles; Log.open carries it out (`settle`,
`drop_interrupted_roll`) and `walctl verify` checks exactly the segments it
names, so the two cannot disagree about the layout. docs/FORMAT.md's
durability table lists every state and what start-up does with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from wal import index
from wal.fsutil import fsync_dir
from wal.prefill import PREPARED_NAME
from wal.segment import parse_name, scan_file, segment_name

TMP_SUFFIX = ".tmp"  # a segment rewritten by compaction, before it is committed


@dataclass
class Layout:
    directory: str
    segments: list[tuple[int, str]]  # (base offset, path) of every retained segment, in order
    finish_rename: tuple[str, str] | None = None  # a committed rewrite to rename in: (tmp, final)
    discard: list[str] = field(default_factory=list)  # uncommitted rewrites, compacted segments
    interrupted_roll: str | None = None  # an empty newest segment past the previous one's end
    prepared: str | None = None  # a prepared next segment a stop or crash left (wal/prefill.py)
    notes: list[str] = field(default_factory=list)


def plan(directory: str, start: int | None) -> Layout | None:
    """The log's layout in `directory` (LOG_START = `start`); None if the
    directory does not exist. Raises nothing for what a cut can leave; a
    LOG_START with no segment or rewrite at it is left for the caller."""
    if not os.path.isdir(directory):
        return None
    names = os.listdir(directory)
    bases = {b: os.path.join(directory, n) for n in names if (b := parse_name(n)) is not None}
    layout = Layout(directory, [])
    if start is not None and start not in bases:
        pending = os.path.join(directory, segment_name(start) + TMP_SUFFIX)
        if os.path.exists(pending):
            layout.finish_rename = (pending, os.path.join(directory, segment_name(start)))
            layout.notes.append(f"finished an interrupted compaction at offset {start}")
            bases[start] = pending  # read from there until it is renamed
    for name in sorted(names):
        if name.endswith(".log" + TMP_SUFFIX) and parse_name(name[: -len(TMP_SUFFIX)]) != start:
            layout.discard.append(os.path.join(directory, name))
            layout.notes.append(f"discarded {name}, left by a compaction that did not commit")
    for base in sorted(bases):
        if start is not None and base < start:
            path = bases.pop(base)
            layout.discard.append(path)
            layout.notes.append(f"removed {os.path.basename(path)}, compacted away")
    layout.segments = sorted(bases.items())
    _find_interrupted_roll(layout)
    if PREPARED_NAME in names:
        # Zeros under a name no segment has: whole, half filled or torn by a cut, it
        # was never part of the log (a roll renames it before its first record).
        # Derived data, as a checkpoint: removed with no note (status stays as it was).
        layout.prepared = os.path.join(directory, PREPARED_NAME)
    return layout


def _find_interrupted_roll(layout: Layout) -> None:
    """An empty newest segment whose base is past where the previous one's
    valid records end is what an older roll left when the power went: the
    previous segment's unsynced tail (never acknowledged: every append into
    the new segment waited for the old one's fdatasync) is gone. The empty
    file is not part of the log; the previous segment is the newest again."""
    if len(layout.segments) < 2:
        return
    base, path = layout.segments[-1]
    prev_base, prev_path = layout.segments[-2]
    if os.path.getsize(path) != 0 or _has_trusted_index(prev_path, prev_base):
        return  # a trusted index was written after the segment's fdatasync: it is whole
    scan = scan_file(prev_path)
    if scan.damage is not None and not scan.tail_shaped:
        return  # damage in the middle stays corruption
    prev_end = prev_base + len(scan.positions)
    if prev_end < base:
        layout.segments.pop()
        layout.interrupted_roll = path
        layout.notes.append(
            f"removed {os.path.basename(path)}, an empty segment left by a roll that a power "
            f"cut interrupted: the previous segment's unacknowledged tail was lost; the log "
            f"continues at offset {prev_end}"
        )


def _has_trusted_index(path: str, base: int) -> bool:
    loaded = index.load(index.index_path(path), base, os.path.getsize(path))
    if loaded is None:
        return False
    loaded.close()
    return True


def settle(layout: Layout) -> None:
    """Finish a committed compaction and discard what an uncommitted one or
    a compaction's deletions left; fsync the directory if anything changed."""
    if layout.finish_rename is not None:
        tmp, final = layout.finish_rename
        os.rename(tmp, final)
        layout.segments = [(b, final if p == tmp else p) for b, p in layout.segments]
    for path in layout.discard:
        os.remove(path)
    if layout.finish_rename is not None or layout.discard:
        fsync_dir(layout.directory)
    if layout.prepared is not None:
        # No directory fsync: if the removal is lost, the next start removes it again.
        os.remove(layout.prepared)


def drop_interrupted_roll(layout: Layout) -> None:
    """Remove the empty segment of an interrupted roll, durably (or it would
    come back after the next cut, past the offsets the log now reuses)."""
    if layout.interrupted_roll is not None:
        os.remove(layout.interrupted_roll)
        fsync_dir(layout.directory)
