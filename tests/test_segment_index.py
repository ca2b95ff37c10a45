"""Sealed segments' index files (wal/index.py): written on roll and on
compaction, trusted at open without reading the segment, ignored and
rebuilt when missing, damaged or stale, removed with their segment.

The trade-off tested here on purpose: a sealed segment with a valid index
is not reread at start, so damage inside its records (of the same size)
no longer stops the writer. It shows where every read checks the CRC again
(`checksum_valid: false`) and in `walctl verify`, which reads every record.
etcd and Kafka trust sealed segments the same way.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import zlib

import pytest

from tests.damage import flip_byte
from tests.nodeproc import wait_until, walctl
from wal import CorruptionError, DiskFull, Log, index, repair
from wal.record import HEADER_SIZE
from wal.segment import segment_name

SEGMENT_BYTES = 64  # 18-byte records: 3 per segment
RECORD = 18


def payload_of(i: int) -> bytes:
    return f"entry-{i:04d}".encode()  # 10 bytes: records of 18 bytes


def write_log(path, n: int) -> None:
    log, _ = Log.open(os.fspath(path), max_segment_bytes=SEGMENT_BYTES)
    try:
        for i in range(n):
            log.append(payload_of(i))
        log.sync()
    finally:
        log.close()


def open_log(path, **kw) -> tuple[Log, object]:
    return Log.open(os.fspath(path), max_segment_bytes=SEGMENT_BYTES, **kw)


def seg(path, base: int) -> str:
    return os.path.join(os.fspath(path), segment_name(base))


def idx(path, base: int) -> str:
    return index.index_path(seg(path, base))


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def files(path, suffix: str) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(suffix))


def assert_all_entries(log: Log, first: int, n: int) -> None:
    for i in range(first, n):
        e = log.read(i)
        assert (e.payload, e.checksum_valid) == (payload_of(i), True), i


# -- written on roll ---------------------------------------------------------


def test_roll_writes_an_index_of_every_sealed_segment(tmp_path):
    write_log(tmp_path, 10)  # segments 0, 3, 6 sealed; 9 active
    assert files(tmp_path, ".idx") == [f"{segment_name(b)[:20]}.idx" for b in (0, 3, 6)]
    data = read(idx(tmp_path, 3))
    # every byte as docs/FORMAT.md describes it
    assert len(data) == 32 + 3 * 4 + 4
    assert data[:8] == b"WNINDX\x00\x01"
    assert struct.unpack_from("<QQQ", data, 8) == (3, 3, 3 * RECORD)
    assert struct.unpack_from("<3I", data, 32) == (0, RECORD, 2 * RECORD)
    assert struct.unpack_from("<I", data, 44)[0] == zlib.crc32(data[:44])


def test_open_trusts_the_index_and_does_not_read_the_sealed_segment(tmp_path):
    write_log(tmp_path, 10)
    flip_byte(seg(tmp_path, 3), RECORD + HEADER_SIZE + 2)  # the payload of offset 4
    log, report = open_log(tmp_path)  # no scan of segment 3: nothing to object to
    try:
        assert report.segments_indexed == 3 and report.segments == 4
        assert log.next_offset == 10
        rotten = log.read(4)
        assert rotten.checksum_valid is False  # every read checks the CRC again
        assert_all_entries(log, 5, 10)
        assert_all_entries(log, 0, 4)
    finally:
        log.close()
    problems, valid = repair.verify(os.fspath(tmp_path))  # what walctl verify runs
    assert [(p.file, p.position, p.torn_tail) for p in problems] == [
        (seg(tmp_path, 3), RECORD, False)
    ]
    assert valid == 9
    # without its index, the same segment is scanned: the rotted record is
    # found, reported and kept at its offset
    os.remove(idx(tmp_path, 3))
    log, report = open_log(tmp_path)
    try:
        assert [(d.file, d.byte, d.offset) for d in report.damaged] == [
            (os.path.basename(seg(tmp_path, 3)), RECORD, 4)
        ]
        assert log.read(4).checksum_valid is False
        assert_all_entries(log, 5, 10)
    finally:
        log.close()
    assert os.path.exists(idx(tmp_path, 3))  # rebuilt, the rotted record in it


# -- ignored, rescanned and rewritten -------------------------------------------


@pytest.mark.parametrize(
    "where", [0, 7, 8, 16, 24, 32, 40, 44, 47], ids=lambda b: f"byte{b}"
)  # magic, version, base, entries, size, positions, crc
def test_damaged_index_is_ignored_rescanned_and_rewritten(tmp_path, where):
    write_log(tmp_path, 10)
    good = read(idx(tmp_path, 3))
    flip_byte(idx(tmp_path, 3), where, 0x01)
    log, report = open_log(tmp_path)
    try:
        assert report.segments_indexed == 2  # 0 and 6; 3 was scanned
        assert_all_entries(log, 0, 10)
    finally:
        log.close()
    assert read(idx(tmp_path, 3)) == good
    _, report = open_log(tmp_path)
    assert report.segments_indexed == 3


def test_cut_index_is_ignored(tmp_path):
    write_log(tmp_path, 10)
    good = read(idx(tmp_path, 0))
    for length in (0, 20, len(good) - 1):
        with open(idx(tmp_path, 0), "wb") as f:
            f.write(good[:length])
        log, report = open_log(tmp_path)
        log.close()
        assert report.segments_indexed == 2
        assert read(idx(tmp_path, 0)) == good


def test_index_of_another_segment_size_is_ignored(tmp_path):
    write_log(tmp_path, 10)
    good = read(idx(tmp_path, 3))
    # a well-formed index (valid CRC) that records another size
    body = bytearray(good[:-4])
    struct.pack_into("<Q", body, 24, 3 * RECORD + 1)
    with open(idx(tmp_path, 3), "wb") as f:
        f.write(bytes(body) + struct.pack("<I", zlib.crc32(body)))
    log, report = open_log(tmp_path)
    log.close()
    assert report.segments_indexed == 2
    assert read(idx(tmp_path, 3)) == good


def test_sealed_segment_cut_or_grown_after_its_index_is_checked(tmp_path):
    write_log(tmp_path, 10)
    path = seg(tmp_path, 3)
    original = read(path)
    os.truncate(path, 2 * RECORD)  # its last record gone: the chain breaks
    with pytest.raises(CorruptionError, match="a gap or overlap"):
        open_log(tmp_path)
    with open(path, "wb") as f:
        f.write(original + b"junk")  # grown: damage in a sealed segment
    with pytest.raises(CorruptionError) as err:
        open_log(tmp_path)
    assert (err.value.path, err.value.position) == (path, 3 * RECORD)


def test_missing_index_is_written_at_open_but_not_by_a_readonly_open(tmp_path):
    write_log(tmp_path, 10)
    good = read(idx(tmp_path, 6))
    os.remove(idx(tmp_path, 6))
    log, report = open_log(tmp_path, readonly=True)
    log.close()
    assert report.segments_indexed == 2 and not os.path.exists(idx(tmp_path, 6))
    log, report = open_log(tmp_path)
    log.close()
    assert report.segments_indexed == 2 and read(idx(tmp_path, 6)) == good


def test_stale_and_unfinished_indexes_are_removed(tmp_path):
    write_log(tmp_path, 10)
    kept = read(idx(tmp_path, 0))
    stale = [idx(tmp_path, 9), idx(tmp_path, 42), idx(tmp_path, 6) + ".tmp"]
    for path in stale:  # the newest segment's, a gone segment's, an unfinished one
        with open(path, "wb") as f:
            f.write(kept)
    log, _ = open_log(tmp_path, readonly=True)
    log.close()
    assert all(os.path.exists(p) for p in stale)
    log, report = open_log(tmp_path)
    try:
        assert report.segments_indexed == 3
        assert_all_entries(log, 0, 10)
    finally:
        log.close()
    assert not any(os.path.exists(p) for p in stale)
    assert files(tmp_path, ".idx") == [os.path.basename(idx(tmp_path, b)) for b in (0, 3, 6)]


def test_an_index_without_segments_is_removed_when_the_log_starts_anew(tmp_path):
    write_log(tmp_path, 10)
    for name in files(tmp_path, ".log"):
        os.remove(os.path.join(tmp_path, name))
    log, _ = open_log(tmp_path)  # a new, empty segment 0 beside the old index of 0
    log.close()
    assert files(tmp_path, ".idx") == []


# -- a failed index write costs only the index -----------------------------------


@pytest.mark.parametrize("failure", ["disk full", "I/O error"])
def test_failed_index_write_does_not_fail_the_roll(tmp_path, monkeypatch, failure):
    def failing_atomic_write(path: str, data: bytes, *, sync_dir: bool = True) -> None:
        with open(path + ".tmp", "wb") as f:
            f.write(data[: len(data) // 2])
        if failure == "disk full":
            raise DiskFull(f"no space left writing {path}.tmp")
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(index, "atomic_write", failing_atomic_write)
    write_log(tmp_path, 10)
    assert files(tmp_path, ".idx") == [] and files(tmp_path, ".tmp") == []
    monkeypatch.undo()
    log, report = open_log(tmp_path)
    try:
        assert report.segments_indexed == 0
        assert_all_entries(log, 0, 10)
    finally:
        log.close()
    assert len(files(tmp_path, ".idx")) == 3  # written by that open


def test_a_segment_past_4_gib_gets_no_index(tmp_path):
    assert index.encode(0, [0, 1 << 32], (1 << 32) + 9) is None
    assert index.write(os.fspath(tmp_path / "x.idx"), 0, [0, 1 << 32], (1 << 32) + 9) is False
    assert os.listdir(tmp_path) == []


# -- compaction ------------------------------------------------------------------


def test_compaction_at_a_segment_boundary_removes_the_deleted_segments_indexes(tmp_path):
    write_log(tmp_path, 12)  # sealed 0, 3, 6; active 9
    log, _ = open_log(tmp_path)
    try:
        log.truncate_before(6)
        assert files(tmp_path, ".idx") == [os.path.basename(idx(tmp_path, 6))]
        assert_all_entries(log, 6, 12)
    finally:
        log.close()
    log, report = open_log(tmp_path)
    log.close()
    assert report.segments_indexed == 1 and report.first_offset == 6


def test_compaction_inside_a_sealed_segment_writes_a_fresh_index(tmp_path):
    write_log(tmp_path, 12)
    log, _ = open_log(tmp_path)
    try:
        log.truncate_before(4)  # segment 3 is rewritten as segment 4
        assert files(tmp_path, ".idx") == [os.path.basename(idx(tmp_path, b)) for b in (4, 6)]
        assert_all_entries(log, 4, 12)
        log.append(payload_of(12))  # rolls: 9 is sealed and indexed
        log.sync()
        assert_all_entries(log, 4, 13)
    finally:
        log.close()
    data = read(idx(tmp_path, 4))
    assert struct.unpack_from("<QQQ", data, 8) == (4, 2, 2 * RECORD)
    assert struct.unpack_from("<2I", data, 32) == (0, RECORD)
    log, report = open_log(tmp_path)
    try:
        assert report.segments_indexed == 3  # 4, 6, 9
        assert_all_entries(log, 4, 13)
    finally:
        log.close()


def test_compaction_inside_the_active_segment_writes_no_index(tmp_path):
    write_log(tmp_path, 11)  # active 9 holds 9 and 10
    log, _ = open_log(tmp_path)
    try:
        log.truncate_before(10)
        assert files(tmp_path, ".idx") == [] and files(tmp_path, ".log") == [segment_name(10)]
        log.append(payload_of(11))
        log.sync()
        assert_all_entries(log, 10, 12)
    finally:
        log.close()


def test_open_finishing_a_compaction_indexes_the_renamed_segment(tmp_path):
    write_log(tmp_path, 12)
    log, _ = open_log(tmp_path)
    log.close()
    # what a crash right after the commit leaves: LOG_START = 4, the rewrite
    # not yet renamed, old segments and their indexes still there
    data = read(seg(tmp_path, 3))[RECORD:]
    with open(seg(tmp_path, 4) + ".tmp", "wb") as f:
        f.write(data)
    with open(os.path.join(tmp_path, "LOG_START"), "w") as f:
        f.write("4\n")
    log, report = open_log(tmp_path)
    try:
        assert report.segments_indexed == 1  # 6; 4 was renamed in and scanned
        assert_all_entries(log, 4, 12)
    finally:
        log.close()
    assert files(tmp_path, ".idx") == [os.path.basename(idx(tmp_path, b)) for b in (4, 6)]


# -- through the real node ---------------------------------------------------------


def sealed_bases(node) -> list[int]:
    segs = node.call({"type": "wal_segment_info"})["segments"]
    return [s["start_offset"] for s in segs if s["sealed"]]


def restart_writer(node) -> dict:
    """kill -9 the writer; return the supervisor's report of its recovery."""
    old = node.process("writer")["pid"]
    os.kill(old, 9)
    assert wait_until(lambda: node.restarted("writer", old), timeout=10)
    return node.status()["last_recovery"]


def test_node_restarts_through_the_indexes_and_still_reports_rot(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir, "--max-segment-bytes", "160", "--no-auto-compact")
    node.init()
    for i in range(30):
        node.call_ok({"type": "wal_append", "payload": payload_of(i).decode()})
    wal = os.path.join(data_dir, "wal")
    sealed = sealed_bases(node)  # 8 records of 18 bytes per 160-byte segment
    assert sealed == [0, 8, 16]
    assert files(wal, ".idx") == [os.path.basename(idx(wal, b)) for b in sealed]

    recovery = restart_writer(node)
    assert recovery["role"] == "writer" and recovery["segments_indexed"] == 3
    assert recovery["entries_recovered"] == 30

    flip_byte(seg(wal, 8), 2 * RECORD + HEADER_SIZE + 1)  # offset 10, in a sealed segment
    recovery = restart_writer(node)  # starts anyway: segment 8 is not reread
    assert recovery["segments_indexed"] == 3
    body = node.call_ok({"type": "wal_read", "offset": 10})
    assert body["checksum_valid"] is False
    body = node.call_ok({"type": "wal_read", "offset": 11})
    assert (body["payload"], body["checksum_valid"]) == ("entry-0011", True)
    assert node.call_ok({"type": "wal_append", "payload": "after"})["offset"] == 30
    assert node.close() == 0

    out = walctl("verify", data_dir)  # reads every record, index or not
    assert out.returncode == 3
    assert f"CORRUPT: {seg(wal, 8)} at byte {2 * RECORD}: record checksum mismatch" in out.stdout


CRASHING_WRITER = """
import sys
from wal import Log
log, _ = Log.open(sys.argv[1], max_segment_bytes=64)
for i in range(10):
    log.append(b"entry-%04d" % i)
    log.sync()
"""


def test_crash_before_the_index_is_written_on_roll(tmp_path):
    env = {**os.environ, "WALNODE_CRASH_AT": "roll.before_index"}
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, os.fspath(tmp_path)], env=env, timeout=30
    )
    assert proc.returncode == -9  # killed itself at the fourth append's roll
    # segment 0 was sealed (fdatasynced); its index never written, and the next
    # segment is created only after that index: a new segment follows a whole one
    assert files(tmp_path, ".log") == [segment_name(0)]
    assert files(tmp_path, ".idx") == []
    log, report = open_log(tmp_path)
    try:
        assert report.segments_indexed == 0
        assert log.next_offset == 3  # the fourth append was never written
        assert_all_entries(log, 0, 3)
    finally:
        log.close()
    assert files(tmp_path, ".idx") == []  # segment 0 is the newest again: no index


def test_node_recovers_from_a_crash_before_the_index_is_written(node_factory, data_dir):
    flags = ("--data-dir", data_dir, "--max-segment-bytes", "160", "--no-auto-compact")
    node = node_factory(*flags, env={"WALNODE_CRASH_AT": "roll.before_index"})
    node.init()
    pid = node.process("writer")["pid"]
    acked = 0
    while True:
        body = node.call({"type": "wal_append", "payload": payload_of(acked).decode()})
        if body["type"] != "wal_append_ok":
            break
        acked += 1
    assert body["code"] == 13 and acked == 8  # the ninth append rolled, then the writer died
    assert wait_until(lambda: node.restarted("writer", pid), timeout=10)
    wal = os.path.join(data_dir, "wal")
    # the roll died before creating segment 8: segment 0 is the newest again
    assert files(wal, ".log") == [segment_name(0)] and files(wal, ".idx") == []
    for i in range(acked):
        body = node.call_ok({"type": "wal_read", "offset": i})
        assert (body["payload"], body["checksum_valid"]) == (payload_of(i).decode(), True)
