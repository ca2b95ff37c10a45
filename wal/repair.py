"""Finding damage in a log directory and cutting the log back to its longest
valid prefix. Used by `walctl verify` and `walctl repair`, never
automatically: the writer itself only ever cuts a torn tail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from wal import index, layout
from wal.fsutil import fsync_dir
from wal.log import read_start_offset
from wal.segment import next_valid_record, parse_name, scan_bytes


@dataclass(frozen=True)
class Problem:
    file: str
    position: int  # byte where the bad region starts
    resumes_at: int | None  # byte where valid records start again, None if never
    reason: str
    offset: int  # the first entry offset that is lost if the log is cut here
    torn_tail: bool  # an interrupted last append: walnode cuts it by itself


@dataclass(frozen=True)
class Cut:
    """What `repair` removes to keep the longest valid prefix."""

    file: str
    keep_bytes: int
    remove_bytes: int
    remove_files: list[str]
    first_lost_offset: int
    next_offset_after: int


def _segment_paths(wal_dir: str) -> list[tuple[int, str]]:
    names = sorted((b, n) for n in os.listdir(wal_dir) if (b := parse_name(n)) is not None)
    return [(base, os.path.join(wal_dir, name)) for base, name in names]


def _retained_segments(wal_dir: str) -> list[tuple[int, str]]:
    """The segments Log.open would open, decided by the same code (wal/layout.py):
    not those a committed compaction removes, nor an interrupted roll's empty one."""
    plan = layout.plan(wal_dir, read_start_offset(wal_dir))
    return plan.segments if plan is not None else []


def verify(wal_dir: str) -> tuple[list[Problem], int]:
    """Every damaged region of every segment, and the count of valid entries.

    Continues past damage (resynchronising on the next valid record) so
    that all of it is reported, not only the first.
    """
    problems: list[Problem] = []
    segments = _retained_segments(wal_dir)
    valid = 0
    expected_base: int | None = None
    for i, (base, path) in enumerate(segments):
        last = i == len(segments) - 1
        with open(path, "rb") as f:
            buf = f.read()
        if expected_base is not None and base != expected_base:
            problems.append(
                Problem(
                    path,
                    0,
                    0,
                    f"segment starts at offset {base}, expected {expected_base}",
                    min(base, expected_base),
                    False,
                )
            )
        offset = base
        pos = 0
        damaged = False
        while pos < len(buf):
            scan = scan_bytes(buf[pos:])
            valid += len(scan.positions)
            offset += len(scan.positions)
            if scan.damage is None:
                break
            bad = pos + scan.valid_end
            damaged = True
            resume = next_valid_record(buf, bad)
            problems.append(
                Problem(path, bad, resume, scan.damage.value, offset, last and scan.tail_shaped)
            )
            if resume is None:
                break
            pos = resume
        # past damage the count of lost records is unknown: no chain check then
        expected_base = None if damaged else offset
    return problems, valid


def plan(wal_dir: str) -> Cut | None:
    """The cut that keeps the longest valid prefix, or None if nothing is bad."""
    problems, _ = verify(wal_dir)
    if not problems:
        return None
    first = problems[0]
    segments = _segment_paths(wal_dir)
    later = [p for _, p in segments if p > first.file]
    size = os.path.getsize(first.file)
    return Cut(
        file=first.file,
        keep_bytes=first.position,
        remove_bytes=size - first.position,
        remove_files=later,
        first_lost_offset=first.offset,
        next_offset_after=first.offset,
    )


def apply(cut: Cut) -> None:
    """Carry out a planned cut: truncate, delete the later segments, fsync.

    Their index files go too: the cut segment becomes the newest, which has
    no index, and a segment created later under a deleted one's name must
    not meet an index that is not its own.
    """
    index.remove(cut.file)
    for path in cut.remove_files:
        index.remove(path)
    if cut.keep_bytes == 0 and cut.file != _first_segment(os.path.dirname(cut.file)):
        os.remove(cut.file)
    else:
        fd = os.open(cut.file, os.O_RDWR)
        try:
            os.ftruncate(fd, cut.keep_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
    for path in cut.remove_files:
        os.remove(path)
    fsync_dir(os.path.dirname(cut.file))


def _first_segment(wal_dir: str) -> str:
    return _segment_paths(wal_dir)[0][1]
