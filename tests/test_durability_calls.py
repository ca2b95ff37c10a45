"""Each durability call in wal/ is needed: without it, a power cut loses what
was promised. One case per call that the rest of the suite could do without
(issue #10, item 8; scripts/fsync_mutants.py removes each call in turn).

A small script runs the library in a child process with the file-system trace
on (wal/fstrace.py) and prints what it promised (an offset it called durable,
entries it refused); the trace is replayed into the power-loss model
(wal/powerloss.py) and the power cut right after the script, keeping only
what was synced (or, for the disk-full case, every prefix of the unsynced
writes). The promise must hold on what the disk kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.nodeproc import REPO
from wal import CorruptionError, Log, powerloss, record, repair, snapshot
from wal.fstrace import ROOT_ENV, TRACE_ENV
from wal.fsyncbench import measure
from wal.index import load as load_index

PRELUDE = """
import json, os, sys
from wal import DataDir, Log, faults, record, repair, snapshot
faults.install_from_env()  # as walnode's processes do at start (actors/runtime.py)
from wal.errors import DiskFull
from wal.fsutil import atomic_write, fsync_dir
from wal.segment import scan_file, segment_name
root = sys.argv[1]
wal = os.path.join(root, "wal")

def promise(**claims):
    print(json.dumps(claims))

def fill(log, first, last, sync=True):
    for i in range(first, last):
        log.append(b"entry-%04d" % i)
    if sync:
        log.sync()

def tear(path, data):
    # bytes a killed writer left where its records end (over the preallocated
    # zeros), written, never synced
    fd = os.open(path, os.O_WRONLY)
    os.lseek(fd, scan_file(path).valid_end, os.SEEK_SET)
    os.write(fd, data)
    os.close(fd)
"""


def traced(tmp_path, script: str, env: dict | None = None) -> tuple[powerloss.Disk, dict]:
    """Run PRELUDE + script traced; the model after it, and what it promised."""
    root = tmp_path / "root"
    root.mkdir()
    trace = tmp_path / "trace"
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + script, str(root)],
        env={**os.environ, TRACE_ENV: str(trace), ROOT_ENV: str(root), **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    disk = powerloss.Disk(str(root))
    for r in powerloss.read_trace(str(trace)):
        disk.apply(r)
    return disk, json.loads(done.stdout.strip().splitlines()[-1])


def cut(tmp_path, disk: powerloss.Disk, keep: powerloss.Keep | None = None, name="cut") -> str:
    dest = str(tmp_path / name)
    powerloss.materialize(disk.crash_state(keep), dest)
    return dest


def next_offset_after(root: str, **kw) -> int:
    log, _ = Log.open(os.path.join(root, "wal"), **kw)
    try:
        return log.next_offset
    finally:
        log.close()


@pytest.mark.parametrize("torn", [False, True], ids=["unsynced records", "and a torn tail"])
def test_log_open_makes_durable_what_it_calls_durable(tmp_path, torn):
    """A killed writer left written, unsynced records (and maybe a torn last
    one). Log.open calls them durable: Log.open's sync of the newest segment,
    or the fsync after cutting the torn tail, must have made them so."""
    disk, said = traced(
        tmp_path,
        f"""
log, _ = Log.open(wal)
fill(log, 0, 5)
fill(log, 5, 8, sync=False)
log.flush()
if {torn}:
    tear(os.path.join(wal, segment_name(0)), record.encode(b"torn append")[0][:13])
again, report = Log.open(wal)
promise(durable=again.durable_offset, cut=report.truncated_at)
""",
    )
    assert said == {"durable": 8, "cut": 8 * 18 if torn else None}
    assert next_offset_after(cut(tmp_path, disk)) == 8


def test_entries_before_the_first_roll_survive(tmp_path):
    """Log.open creates the first segment: its directory entry must be durable
    before anything in it is acknowledged."""
    disk, said = traced(
        tmp_path,
        """
log, _ = Log.open(wal)
log.append(b"first")
log.sync()
promise(durable=log.durable_offset)
""",
    )
    assert said == {"durable": 1}
    assert next_offset_after(cut(tmp_path, disk)) == 1


def test_entries_after_a_roll_survive(tmp_path):
    """The roll's directory fsync: the new segment's entry is durable before
    an append in it is acknowledged (no later step fsyncs the directory)."""
    disk, said = traced(
        tmp_path,
        """
log, _ = Log.open(wal, max_segment_bytes=64)
for i in range(4):  # 18-byte records: the fourth rolls
    log.append(b"entry-%04d" % i)
    log.sync()
promise(durable=log.durable_offset, segments=log.segment_count)
""",
    )
    assert said == {"durable": 4, "segments": 2}
    assert next_offset_after(cut(tmp_path, disk), max_segment_bytes=64) == 4


def test_atomic_write_leaves_the_new_file_after_it_returns(tmp_path):
    disk, said = traced(
        tmp_path,
        """
path = os.path.join(root, "walnode.meta")
atomic_write(path, b"old")
atomic_write(path, b"new")
promise(done=True)
""",
    )
    assert said == {"done": True}
    with open(os.path.join(cut(tmp_path, disk), "walnode.meta"), "rb") as f:
        assert f.read() == b"new"


def test_an_index_is_never_durable_before_its_segment(tmp_path):
    """Older walnode created the next segment before it fdatasynced the old
    one; a killed writer left that. Log.open scans the old segment (from the
    page cache), calls its records durable and writes its index: write_index
    must fdatasync the segment first."""
    disk, said = traced(
        tmp_path,
        """
from wal.segment import Segment
Segment._preallocate = lambda self, end, limit: None  # older walnode wrote no zeros ahead
log, _ = Log.open(wal, max_segment_bytes=64)
log.append(b"entry-0000")
log.append(b"entry-0001")
log.sync()
log.append(b"entry-0002")
log.flush()  # the old roll's flush, then its create; killed before the fdatasync
os.close(os.open(os.path.join(wal, segment_name(3)), os.O_RDWR | os.O_CREAT, 0o644))
fsync_dir(wal)
again, report = Log.open(wal, max_segment_bytes=64)
indexed = os.path.exists(os.path.join(wal, "00000000000000000000.idx"))
promise(durable=again.durable_offset, indexed=indexed)
""",
    )
    assert said == {"durable": 3, "indexed": True}
    assert next_offset_after(cut(tmp_path, disk), max_segment_bytes=64) == 3


def test_dropping_an_interrupted_roll_is_durable(tmp_path):
    """Start-up removes an interrupted roll's empty segment 8 and the log goes
    on at 6, past 8. If the removal were lost, segment 8 would come back
    inside the log's offsets: an overlap, a refused start."""
    disk, said = traced(
        tmp_path,
        """
log, _ = Log.open(wal, max_segment_bytes=64)
fill(log, 0, 6)
tear(os.path.join(wal, segment_name(3)), record.encode(b"entry-0006")[0][:11])
os.close(os.open(os.path.join(wal, segment_name(8)), os.O_RDWR | os.O_CREAT, 0o644))
fsync_dir(wal)
again, report = Log.open(wal, max_segment_bytes=1 << 20)
fill(again, 6, 11)
promise(durable=again.durable_offset, dropped=report.interrupted_roll)
""",
    )
    assert said == {"durable": 11, "dropped": "00000000000000000008.log"}
    assert next_offset_after(cut(tmp_path, disk), max_segment_bytes=1 << 20) == 11


def test_a_disk_full_cut_is_durable_before_the_appends_are_refused(tmp_path):
    """A short write on a full disk left whole records of a refused batch in
    the file; it is cut back and the cut fdatasynced before error 11. No
    prefix of what the disk may keep brings a refused entry back."""
    switch = tmp_path / "disk-is-full"
    disk, said = traced(
        tmp_path,
        f"""
log, _ = Log.open(wal)
fill(log, 0, 3)
open({str(switch)!r}, "w").close()
fill(log, 3, 9, sync=False)
try:
    log.sync()
except DiskFull:
    promise(refused_from=3)
""",
        env={"WALNODE_FAULT_IO": f"write:ENOSPC:{switch}"},
    )
    assert said == {"refused_from": 3}
    files, dirs = disk.unsynced()
    states = [powerloss.Keep(dirs=dirs)]
    for ino, units in files.items():
        states += [powerloss.Keep({ino: (k, None)}, dirs) for k in range(1, len(units) + 1)]
    for n, keep in enumerate(states):
        assert next_offset_after(cut(tmp_path, disk, keep, f"cut{n}")) == 3, keep


def test_a_repair_is_durable(tmp_path):
    """walctl repair writes a lost-record marker over a rotted record in place
    (every offset kept): after a power cut the marker is still there, so the
    bad bytes stay gone and every other entry is still valid."""
    disk, said = traced(
        tmp_path,
        """
log, _ = Log.open(wal, max_segment_bytes=64)
fill(log, 0, 9)
log.close()
path = os.path.join(wal, segment_name(0))
fd = os.open(path, os.O_RDWR)
os.pwrite(fd, b"X", 18 + 12)  # a payload byte of entry 1
os.fsync(fd)
os.close(fd)
repair.apply(repair.plan(DataDir(root, create=False)))
promise(kept=len(repair.verify(wal)[0]) == 0)
""",
    )
    assert said == {"kept": True}
    root = cut(tmp_path, disk)
    lost: list[int] = []
    problems, valid = repair.verify(os.path.join(root, "wal"), lost)
    assert problems == [] and valid == 8 and lost == [1]


def test_a_repair_cut_of_a_torn_tail_is_durable(tmp_path):
    """A torn append that reached the disk: walctl repair cuts it, and after
    a power cut it stays cut (the truncate is fsynced before repair returns)."""
    disk, said = traced(
        tmp_path,
        """
log, _ = Log.open(wal)
fill(log, 0, 5)
log.close()
path = os.path.join(wal, segment_name(0))
tear(path, record.encode(b"torn append")[0][:13])
fd = os.open(path, os.O_RDONLY)
os.fsync(fd)  # the torn bytes are on disk, as a writer killed mid-write may leave them
os.close(fd)
repair.apply(repair.plan(DataDir(root, create=False)))
promise(clean=repair.verify(wal)[0] == [])
""",
    )
    assert said == {"clean": True}
    problems, valid = repair.verify(os.path.join(cut(tmp_path, disk), "wal"))
    assert problems == [] and valid == 5


def test_a_repair_that_recreates_a_missing_segment_is_durable(tmp_path):
    """A middle segment deleted: walctl repair recreates it as lost-record
    markers (every offset kept); after a power cut the new file is still
    there (its directory entry was fsynced)."""
    disk, said = traced(
        tmp_path,
        """
log, _ = Log.open(wal, max_segment_bytes=64)
fill(log, 0, 9)  # segments 0, 3 and 6
log.close()
for name in os.listdir(wal):
    if name.startswith(segment_name(3)[:-4]):
        os.remove(os.path.join(wal, name))  # the segment and its index
fsync_dir(wal)
repair.apply(repair.plan(DataDir(root, create=False)))
promise(clean=repair.verify(wal)[0] == [])
""",
    )
    assert said == {"clean": True}
    lost: list[int] = []
    problems, valid = repair.verify(os.path.join(cut(tmp_path, disk), "wal"), lost)
    assert problems == [] and valid == 6 and lost == [3, 4, 5]


def test_a_bad_crc_record_is_a_tear_only_at_the_very_end(tmp_path):
    """Rot in an acknowledged record followed by a torn append: no valid
    record follows the rotted one, but it does not end the file, so it is
    not an interrupted append and must not be cut silently."""
    wal = str(tmp_path)
    log, _ = Log.open(wal)
    for i in range(6):
        log.append(b"entry-%04d" % i)
    log.sync()
    log.close()
    path = os.path.join(wal, "00000000000000000000.log")
    with open(path, "r+b") as f:
        f.seek(5 * 18 + 12)  # a payload byte of entry 5, the last whole record
        f.write(b"X")
        f.seek(0, os.SEEK_END)
        f.write(record.encode(b"torn append")[0][:13])
    try:
        log, _ = Log.open(wal, readonly=True)
    except CorruptionError as err:
        assert f"at byte {5 * 18}" in str(err)
    else:  # a rotted record may be kept as unreadable (never cut): its offset stays
        log.close()
        assert log.next_offset >= 6


def test_load_latest_moves_a_damaged_snapshot_aside_durably(tmp_path):
    """A damaged snapshot moved aside is never listed again, also after a cut."""
    disk, said = traced(
        tmp_path,
        """
snaps = os.path.join(root, "snapshots")
snapshot.write(snaps, 10, {"a": "1"})
snapshot.write(snaps, 20, {"a": "2"})
fd = os.open(os.path.join(snaps, "00000000000000000020.snap"), os.O_RDWR)
os.pwrite(fd, b"X", 30)
os.fsync(fd)
os.close(fd)
snap, skipped = snapshot.load_latest(snaps)
promise(loaded=snap.offset)
""",
    )
    assert said == {"loaded": 10}
    assert snapshot.list_offsets(os.path.join(cut(tmp_path, disk), "snapshots")) == [10]


def test_a_written_snapshot_survives(tmp_path):
    """snapshot.write's temp-file fsync and directory fsync, and make_dirs's
    fsync of the parent that gets the new snapshots/ directory."""
    disk, said = traced(
        tmp_path,
        """
snapshot.write(os.path.join(root, "snapshots"), 10, {"a": "1"})
promise(written=10)
""",
    )
    assert said == {"written": 10}
    snap, _ = snapshot.load_latest(os.path.join(cut(tmp_path, disk), "snapshots"))
    assert snap is not None and (snap.offset, snap.state) == (10, {"a": "1"})


def test_fsync_benchmark_really_fdatasyncs(tmp_path, monkeypatch):
    """The benchmark measures fdatasync: `always` syncs every record,
    `batch_10ms` whenever 10 ms passed and once at the end."""
    import wal.fsyncbench as bench

    synced: list[int] = []
    real_fdatasync, real_write_all = os.fdatasync, bench.write_all
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real_fdatasync(fd)))
    assert measure(str(tmp_path), 5, "always")["strategy"] == "always"
    assert len(synced) == 5
    synced.clear()

    def slow_write_all(fd: int, data: bytes) -> None:
        real_write_all(fd, data)
        import time

        time.sleep(0.011)

    monkeypatch.setattr(bench, "write_all", slow_write_all)
    measure(str(tmp_path), 3, "batch_10ms")
    assert len(synced) == 4  # after each 10 ms, and the last one
    synced.clear()
    measure(str(tmp_path), 3, "none")
    assert synced == []
    assert os.listdir(tmp_path) == []


def test_index_load_leaks_no_file_descriptor(tmp_path):
    wal = str(tmp_path)
    log, _ = Log.open(wal, max_segment_bytes=64)
    for i in range(6):
        log.append(b"entry-%04d" % i)
    log.sync()
    log.close()
    idx = os.path.join(wal, "00000000000000000000.idx")
    before = len(os.listdir("/proc/self/fd"))
    for size in (54, 53):  # the right segment size, and a wrong one (rejected)
        loaded = load_index(idx, 0, size)
        if loaded is not None:
            loaded.positions.release()
            loaded.mapping.close()
    assert len(os.listdir("/proc/self/fd")) == before


# -- deletions and renames made durable (nothing else fsyncs the directory after them)


def wal_files(root: str, suffix: str = "") -> list[str]:
    return sorted(n for n in os.listdir(os.path.join(root, "wal")) if n.endswith(suffix))


def test_a_compaction_leaves_nothing_below_its_offset_after_a_cut(tmp_path):
    """wal_compact's promise, no record below X in any file, holds after a
    power cut too: the rename and the deletions are durable when it returns,
    and so is the rewrite of the straddling segment."""
    disk, said = traced(
        tmp_path,
        """
log, _ = Log.open(wal, max_segment_bytes=64)
fill(log, 0, 6)  # segment 0 sealed, segment 3 active
promise(counts=log.truncate_before(4)[:2])
""",
    )
    assert said == {"counts": [6, 2]}
    root = cut(tmp_path, disk)
    assert wal_files(root) == ["00000000000000000004.log", "LOG_START"]
    log, _ = Log.open(os.path.join(root, "wal"), readonly=True)
    try:  # and the rewrite's records are in it (its fsync came before the commit)
        assert [log.read(o).payload for o in (4, 5)] == [b"entry-0004", b"entry-0005"]
    finally:
        log.close()


def test_settling_a_cut_compaction_is_durable(tmp_path):
    """Start-up finishes a committed compaction (renames the rewrite in,
    deletes what is below LOG_START): durably, so a second cut does not
    bring the old files back."""
    disk, said = traced(
        tmp_path,
        """
log, _ = Log.open(wal, max_segment_bytes=64)
fill(log, 0, 6)
with open(os.path.join(wal, segment_name(3)), "rb") as f:
    rest = f.read()[18:]  # entries 4 and 5
fd = os.open(os.path.join(wal, segment_name(4) + ".tmp"), os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, rest)
os.fsync(fd)
os.close(fd)
os.remove(os.path.join(wal, "00000000000000000000.idx"))
atomic_write(os.path.join(wal, "LOG_START"), b"4\\n")  # committed; the process dies here
again, report = Log.open(wal, max_segment_bytes=64)
promise(first=again.first_offset, next=again.next_offset)
""",
    )
    assert said == {"first": 4, "next": 6}
    assert wal_files(cut(tmp_path, disk)) == ["00000000000000000004.log", "LOG_START"]


def test_removed_stale_indexes_stay_removed(tmp_path):
    disk, said = traced(
        tmp_path,
        """
log, _ = Log.open(wal, max_segment_bytes=64)
fill(log, 0, 7)  # segments 0 and 3 sealed and indexed, 6 the newest
atomic_write(os.path.join(wal, "00000000000000000006.idx"), b"not this segment's")
again, report = Log.open(wal, max_segment_bytes=64)
promise(removed=[n for n in report.notes if "stale" in n])
""",
    )
    assert len(said["removed"]) == 1
    assert wal_files(cut(tmp_path, disk), ".idx") == [
        "00000000000000000000.idx",
        "00000000000000000003.idx",
    ]


@pytest.mark.parametrize("step", ["remove_temp_files", "prune"])
def test_snapshot_temp_files_and_pruned_snapshots_stay_removed(tmp_path, step):
    disk, said = traced(
        tmp_path,
        f"""
snaps = os.path.join(root, "snapshots")
for offset in (10, 20, 30):
    snapshot.write(snaps, offset, {{"k": str(offset)}})
fd = os.open(os.path.join(snaps, "00000000000000000040.snap.tmp"), os.O_WRONLY | os.O_CREAT)
os.write(fd, b"half a snapshot")
os.fsync(fd)
os.close(fd)
fsync_dir(snaps)
if {step!r} == "prune":
    promise(removed=snapshot.prune(snaps, 1))
else:
    promise(removed=snapshot.remove_temp_files(snaps))
""",
    )
    kept = sorted(os.listdir(os.path.join(cut(tmp_path, disk), "snapshots")))
    if step == "prune":
        assert len(said["removed"]) == 2
        assert kept == ["00000000000000000030.snap", "00000000000000000040.snap.tmp"]
    else:
        assert said["removed"] == ["00000000000000000040.snap.tmp"]
        assert kept == [snapshot.snapshot_name(o) for o in (10, 20, 30)]


# -- the other survivors of the mutation run --------------------------------


def test_verify_reports_a_gap_between_segments(tmp_path):
    wal = str(tmp_path)
    log, _ = Log.open(wal, max_segment_bytes=64)
    for i in range(9):  # segments 0, 3 and 6
        log.append(b"entry-%04d" % i)
    log.sync()
    log.close()
    os.remove(os.path.join(wal, "00000000000000000003.log"))
    problems, _ = repair.verify(wal)
    assert [p.reason for p in problems] == ["segment file missing: entries 3 to 5 are gone"]


def test_compaction_exactly_at_the_next_offset_empties_the_log(tmp_path):
    log, _ = Log.open(str(tmp_path))
    try:
        for i in range(5):
            log.append(b"entry-%04d" % i)
        log.sync()
        assert log.truncate_before(5)[:2] == (5, 0)
        assert (log.first_offset, log.next_offset) == (5, 5)
        assert log.append(b"after")[0] == 5
    finally:
        log.close()


def test_prune_keeps_exactly_the_newest_k(tmp_path):
    for offset in (10, 20, 30, 40):
        snapshot.write(str(tmp_path), offset, {"k": str(offset)})
    assert snapshot.prune(str(tmp_path), 2) == [
        snapshot.snapshot_name(10),
        snapshot.snapshot_name(20),
    ]
    assert snapshot.list_offsets(str(tmp_path)) == [30, 40]
