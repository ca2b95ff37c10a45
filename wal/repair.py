"""Finding damage in a data directory, and repairing it without moving an offset.
Used by `walctl verify` and `walctl repair`, never automatically: the writer
itself only ever cuts a torn tail.

Repair keeps every valid record where it is. A region holding records that
cannot be read any more (a record failing its CRC, a damaged length field,
a segment file that is gone) is overwritten, or recreated, with lost-record
markers (wal/record.py, docs/FORMAT.md): one per offset the region held,
filling exactly its bytes, so nothing after it moves, the sealed segments'
index files stay true, and reading such an offset says what was lost. Only
a torn tail (never acknowledged) is cut.
"""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass, field, replace

from wal import epochs, index, layout, record
from wal.datadir import DataDir
from wal.errors import CorruptionError, WalError
from wal.fsutil import atomic_write, fsync_dir, write_all
from wal.log import LOG_START, check_reach, read_start_offset
from wal.segment import next_valid_record, parse_name, scan_bytes, segment_name


@dataclass(frozen=True)
class Problem:
    file: str
    position: int  # byte where the bad region starts
    resumes_at: int | None  # byte where valid records start again, None if never
    reason: str
    offset: int  # the first entry offset the bad region held
    torn_tail: bool  # an interrupted last append: walnode cuts it by itself
    records: int = 1  # offsets the region held (0 for a torn tail or an overlap)
    counted: bool = True  # False: `records` is assumed (no later segment to count against)
    end: int | None = None  # the byte after the region
    missing_file: bool = False  # the whole segment file is gone


@dataclass(frozen=True)
class Marking:
    """Lost-record markers filling bytes [start, end) of `file` (a new file
    if `create`), one per offset from `first_offset` on."""

    file: str
    start: int
    end: int
    first_offset: int
    count: int
    why: str
    create: bool = False


@dataclass
class Plan:
    """What `repair` would do; false when there is nothing to do."""

    markings: list[Marking] = field(default_factory=list)
    cut: tuple[str, int, int] | None = None  # (file, keep_bytes, remove_bytes): a torn tail
    rewrites: list[tuple[str, bytes, str]] = field(default_factory=list)  # path, content, why
    refusals: list[str] = field(default_factory=list)  # damage repair cannot undo safely

    def __bool__(self) -> bool:
        return bool(self.markings or self.cut or self.rewrites or self.refusals)


def _retained_segments(wal_dir: str) -> list[tuple[int, str]]:
    """The segments Log.open would open, decided by the same code (wal/layout.py):
    not those a committed compaction removes, nor an interrupted roll's empty one.
    With a damaged LOG_START (check_files reports it), every segment present."""
    try:
        plan = layout.plan(wal_dir, read_start_offset(wal_dir))
    except CorruptionError:
        return sorted(
            (b, os.path.join(wal_dir, n))
            for n in os.listdir(wal_dir)
            if (b := parse_name(n)) is not None
        )
    return plan.segments if plan is not None else []


def verify(wal_dir: str, lost: list[int] | None = None) -> tuple[list[Problem], int]:
    """Every damaged region of every segment, and the count of valid entries.

    The segments are the ones Log.open opens (a committed compaction counts
    as finished). A sealed segment with a valid index is checked at the
    positions its index gives, so a damaged length field there costs one
    record too. Goes on past damage, so that all of it is reported. `lost`
    receives the offsets of lost-record markers (losses already repaired).
    """
    problems: list[Problem] = []
    segments = _retained_segments(wal_dir)
    valid = 0
    expected: int | None = None
    for i, (base, path) in enumerate(segments):
        if expected is not None and base > expected:
            problems.append(_missing(wal_dir, expected, base))
        elif expected is not None and base < expected:
            text = f"segment starts at offset {base}, expected {expected} (an overlap)"
            problems.append(Problem(path, 0, 0, text, base, False, 0))
        last = i == len(segments) - 1
        next_base = None if last else segments[i + 1][0]
        found, count, markers = _check_segment(path, base, next_base, last)
        problems.extend(found)
        valid += count - len(markers) - sum(p.records for p in found)
        if lost is not None:
            lost.extend(markers)
        expected = base + count
    return problems, valid


def _missing(wal_dir: str, expected: int, base: int) -> Problem:
    path = os.path.join(wal_dir, segment_name(expected))
    text = f"segment file missing: entries {expected} to {base - 1} are gone"
    return Problem(path, 0, None, text, expected, False, base - expected, True, 0, True)


def _check_segment(
    path: str, base: int, next_base: int | None, last: bool
) -> tuple[list[Problem], int, list[int]]:
    """One segment's problems, the offsets it holds, and its markers' offsets."""
    with open(path, "rb") as f:
        buf = f.read()
    loaded = None if last else index.load(index.index_path(path), base, len(buf))
    if loaded is not None:
        positions = list(loaded.positions)
        loaded.close()
        return _check_indexed(path, buf, base, positions)
    return _check_scanned(path, buf, base, next_base, last)


def _check_indexed(
    path: str, buf: bytes, base: int, positions: list[int]
) -> tuple[list[Problem], int, list[int]]:
    problems, markers = [], []
    for i, start in enumerate(positions):
        end = positions[i + 1] if i + 1 < len(positions) else len(buf)
        got = record.decode_at(buf, start)  # valid only if it ends where the next starts
        if isinstance(got, record.Decoded) and got.end == end:
            if got.lost:
                markers.append(base + i)
            continue
        why = (
            record.Damage.BAD_CRC.value
            if got is record.Damage.BAD_CRC
            else "the record's length field does not match its index (damaged)"
        )
        problems.append(Problem(path, start, end, why, base + i, False, 1, True, end))
    return problems, len(positions), markers


def _check_scanned(
    path: str, buf: bytes, base: int, next_base: int | None, last: bool
) -> tuple[list[Problem], int, list[int]]:
    problems: list[Problem] = []
    markers: list[int] = []
    unplaced: list[int] = []  # indexes into problems of regions of unknown shape
    offset, pos = base, 0
    while pos < len(buf):
        scan = scan_bytes(buf[pos:], sealed=not last)
        for p in scan.rotted:
            at = offset + bisect.bisect_left(scan.positions, p)
            length = int.from_bytes(buf[pos + p : pos + p + 4], "little") & record.LENGTH_MASK
            end = pos + p + record.HEADER_SIZE + length
            problems.append(
                Problem(path, pos + p, end, record.Damage.BAD_CRC.value, at, False, 1, True, end)
            )
        markers.extend(offset + bisect.bisect_left(scan.positions, p) for p in scan.lost)
        offset += len(scan.positions)
        if scan.damage is None:
            break
        bad = pos + scan.valid_end
        if last and scan.tail_shaped:
            problems.append(Problem(path, bad, None, scan.damage.value, offset, True, 0))
            break
        resume = next_valid_record(buf, bad)
        end = len(buf) if resume is None else resume
        unplaced.append(len(problems))
        problems.append(Problem(path, bad, resume, scan.damage.value, offset, False, 1, False, end))
        offset += 1
        if resume is None:
            break
        pos = resume
    if next_base is not None and len(unplaced) == 1:
        # the next segment's base says how many offsets the region held
        region = problems[unplaced[0]]
        held = next_base - (offset - 1)
        if held >= 0:
            problems[unplaced[0]] = replace(region, records=held, counted=True)
            offset += held - 1
    return problems, offset - base, markers


# -- the data directory's small files ----------------------------------------


def check_files(datadir: DataDir) -> tuple[list[str], list[tuple[str, bytes, str]], list[str]]:
    """walnode.meta, LOG_START and the recorded reach, checked as Log.open and
    the writer check them: (problems, rewrites that fix them, what cannot be
    fixed without reusing offsets)."""
    problems: list[str] = []
    rewrites: list[tuple[str, bytes, str]] = []
    refusals: list[str] = []
    meta = None
    try:
        meta = datadir.read_meta()
    except CorruptionError as err:
        problems.append(str(err))
        fixed = datadir.repaired_meta()
        content = json.dumps(fixed, sort_keys=True).encode() + b"\n"
        rewrites.append((datadir.meta_path, content, f"keep only its valid fields: {fixed}"))
    wal = datadir.wal_dir
    try:
        read_start_offset(wal)
    except CorruptionError as err:
        problems.append(str(err))
        names = datadir.segment_bases()
        if names:
            text = f"{names[0]}\n".encode()
            rewrites.append((os.path.join(wal, LOG_START), text, f"the first segment's {names[0]}"))
        else:
            refusals.append(f"{LOG_START} is damaged and no segment says where the log starts")
    if meta is not None:
        try:
            bases = [(b, "") for b in datadir.segment_bases()]
            check_reach(wal, bases, meta.get("reached_segment"))
        except CorruptionError as err:
            problems.append(str(err))
            refusals.append(
                f"{err.path} is gone with the entries it held (how many is not recorded): "
                f"restore it; repair cannot recreate it without reusing acknowledged offsets"
            )
    try:
        epochs.read(wal)  # a replica's: the epoch of every entry
    except CorruptionError as err:
        problems.append(str(err))
        refusals.append(
            f"{err.path} is damaged and the entries' epochs are recorded nowhere else: copy "
            f"this replica's data directory from another replica"
        )
    return problems, rewrites, refusals


# -- planning and applying -------------------------------------------------


def plan(datadir: DataDir) -> Plan:
    """What repairing `datadir` takes (an empty Plan if nothing is wrong)."""
    out = Plan()
    _, out.rewrites, out.refusals = check_files(datadir)
    if out.refusals:
        return out
    problems, _ = verify(datadir.wal_dir)
    for p in problems:
        if p.torn_tail:
            size = os.path.getsize(p.file)
            out.cut = (p.file, p.position, size - p.position)
        elif p.records == 0:
            out.refusals.append(f"{p.file}: {p.reason}")
        else:
            end = p.end if p.end is not None else os.path.getsize(p.file)
            why = f"{p.reason} at byte {p.position} of {os.path.basename(p.file)}"
            if not p.counted:
                why += " (assumed to hold one record: no later segment counts them)"
            if p.missing_file:
                why = "its segment file was missing"
                end = p.records * (record.HEADER_SIZE + len(why))
            if end - p.position < p.records * record.HEADER_SIZE:
                out.refusals.append(f"{p.file}: {p.records} records cannot fit in {why}")
                continue
            out.markings.append(
                Marking(p.file, p.position, end, p.offset, p.records, why, p.missing_file)
            )
    return out


def marker_bytes(marking: Marking) -> bytes:
    """`count` markers filling exactly end - start bytes (the last takes the rest)."""
    size = marking.end - marking.start
    each = size // marking.count
    out = []
    for i in range(marking.count):
        room = (size - each * (marking.count - 1) if i == marking.count - 1 else each) - 8
        text = marking.why  # as much of it as fits: the offset itself says which entry
        out.append(record.encode_lost(text.encode()[:room].ljust(room)))
    return b"".join(out)


def apply(repair_plan: Plan) -> None:
    """Carry out a plan: markers written and fsynced in place (or a missing
    segment recreated), a torn tail cut, damaged small files replaced."""
    if repair_plan.refusals:
        raise WalError("; ".join(repair_plan.refusals))
    dirs = set()
    for path, content, _why in repair_plan.rewrites:
        atomic_write(path, content)
    for mk in repair_plan.markings:
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if mk.create else 0)
        fd = os.open(mk.file, flags, 0o644)
        try:
            data = marker_bytes(mk)
            os.lseek(fd, mk.start, os.SEEK_SET)
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if mk.create:
            dirs.add(os.path.dirname(mk.file))
    if repair_plan.cut is not None:
        path, keep, _ = repair_plan.cut
        index.remove(path)
        fd = os.open(path, os.O_RDWR)
        try:
            os.ftruncate(fd, keep)
            os.fsync(fd)
        finally:
            os.close(fd)
        dirs.add(os.path.dirname(path))
    for d in dirs:
        fsync_dir(d)
