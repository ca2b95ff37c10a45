"""Unit tests of the wal/ storage library: records, segments, the log,
the data directory and the state machine. No processes, no sockets."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import zlib

import pytest

from tests.damage import cut_to_data, flip_byte
from wal import CorruptionError, DataDir, DirectoryLocked, Log, WalError, record
from wal.log import OffsetOutOfRange
from wal.record import HEADER_SIZE, Damage
from wal.segment import segment_name
from wal.statemachine import replay


def payload_of(i: int) -> bytes:
    return f"entry-{i:04d}".encode()  # 10 bytes: records of 18 bytes


def write_log(path, n: int, max_segment_bytes: int | None = None) -> list[tuple[int, int]]:
    kw = {} if max_segment_bytes is None else {"max_segment_bytes": max_segment_bytes}
    log, _ = Log.open(os.fspath(path), **kw)
    try:
        got = [log.append(payload_of(i)) for i in range(n)]
        log.sync()
    finally:
        log.close()
    return got


def seg_path(path, base: int = 0) -> str:
    return os.path.join(os.fspath(path), segment_name(base))


def drop_indexes(path) -> None:
    """Remove the sealed segments' index files, so that the next open checks
    every record (with an index it trusts a sealed segment unread:
    tests/test_segment_index.py)."""
    for name in os.listdir(path):
        if name.endswith(".idx"):
            os.remove(os.path.join(path, name))


def record_positions(n: int) -> list[int]:
    size = HEADER_SIZE + len(payload_of(0))
    return [i * size for i in range(n)]


# -- 1. records ------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"x", b"hello world", bytes(range(256)) * 3])
def test_record_round_trip(payload):
    data, crc = record.encode(payload)
    len_bytes = len(payload).to_bytes(4, "little")
    assert len(data) == HEADER_SIZE + len(payload)
    assert data[:4] == len_bytes
    assert crc == zlib.crc32(len_bytes + payload)
    assert data[4:8] == crc.to_bytes(4, "little")
    assert data[8:] == payload
    assert record.checksum(len_bytes, payload) == crc

    # decoded from the start and from the middle of a larger buffer
    got = record.decode_at(data, 0)
    assert got == record.Decoded(HEADER_SIZE, len(payload), crc, len(data))
    buf = b"garbage!" + data + b"trailing"
    got = record.decode_at(buf, 8)
    assert not isinstance(got, Damage)
    assert buf[got.payload_start : got.end] == payload
    assert got.crc == crc and got.length == len(payload) and got.end == 8 + len(data)


@pytest.mark.parametrize("size", [8, 9, 16, 100, 4096])
def test_zero_region_never_decodes(size):
    assert record.decode_at(bytes(size), 0) is Damage.BAD_CRC
    assert zlib.crc32(bytes(4)) == 0x2144DF1C


def test_record_damage_kinds():
    data, _ = record.encode(b"payload")
    assert record.decode_at(data[:7], 0) is Damage.INCOMPLETE_HEADER
    assert record.decode_at(data[:-1], 0) is Damage.INCOMPLETE_PAYLOAD
    bad = bytearray(data)
    bad[-1] ^= 1
    assert record.decode_at(bytes(bad), 0) is Damage.BAD_CRC
    assert record.crc_hex(0xAB) == "000000ab"


# -- 2. round trip through close/reopen ------------------------------------


def test_append_close_reopen(tmp_path):
    n = 30
    log, report = Log.open(os.fspath(tmp_path))
    assert (report.entries_recovered, report.bytes_truncated, report.segments) == (0, 0, 1)
    appended = [log.append(payload_of(i)) for i in range(n)]
    assert [off for off, _ in appended] == list(range(n))
    log.sync()
    log.close()

    log, report = Log.open(os.fspath(tmp_path))
    try:
        assert log.first_offset == 0 and log.next_offset == n and log.entries == n
        assert report.bytes_truncated == 0 and report.truncated_file is None
        assert report.entries_recovered == n
        assert (report.first_offset, report.next_offset) == (0, n)
        for i, (_, crc) in enumerate(appended):
            e = log.read(i)
            assert e.offset == i
            assert e.payload == payload_of(i)
            assert e.crc == crc == zlib.crc32(len(e.payload).to_bytes(4, "little") + e.payload)
            assert e.checksum_valid is True
        assert log.total_bytes == n * (HEADER_SIZE + len(payload_of(0)))
        assert log.segments()[0].size_bytes == log.total_bytes  # logical, not the file's
        # the active file is zero-filled ahead of its data (preallocated)
        assert os.path.getsize(seg_path(tmp_path)) > log.total_bytes
    finally:
        log.close()


# -- 3. torn tail at every byte --------------------------------------------


def test_torn_tail_at_every_byte(tmp_path):
    src = tmp_path / "src"
    write_log(src, 5)
    file_size = cut_to_data(seg_path(src))
    last_size = HEADER_SIZE + len(payload_of(4))
    good = file_size - last_size
    assert good == record_positions(5)[4]

    for cut in range(good, file_size):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(src, d)
        os.truncate(seg_path(d), cut)

        log, report = Log.open(os.fspath(d))
        try:
            assert log.entries == 4, cut
            assert log.next_offset == 4, cut
            assert report.bytes_truncated == cut - good, cut
            if cut > good:
                assert report.truncated_file == segment_name(0)
                assert report.truncated_at == good
                expect = (
                    Damage.INCOMPLETE_HEADER
                    if cut - good < HEADER_SIZE
                    else Damage.INCOMPLETE_PAYLOAD
                )
                assert report.truncation_reason == expect.value
            assert os.path.getsize(seg_path(d)) == good, cut
            off, crc = log.append(b"after-cut")
            assert off == 4
            log.sync()
        finally:
            log.close()

        log, report = Log.open(os.fspath(d))
        try:
            assert report.bytes_truncated == 0
            assert log.next_offset == 5
            e = log.read(4)
            assert (e.payload, e.crc, e.checksum_valid) == (b"after-cut", crc, True)
            assert all(log.read(i).payload == payload_of(i) for i in range(4))
        finally:
            log.close()


# -- 4. bad CRC on the last record -----------------------------------------


def test_crc_failing_last_record_is_cut(tmp_path):
    write_log(tmp_path, 5)
    path = seg_path(tmp_path)
    file_size = os.path.getsize(path)
    last = record_positions(5)[4]
    flip_byte(path, last + HEADER_SIZE + 3)

    log, report = Log.open(os.fspath(tmp_path))
    try:
        assert log.entries == 4 and log.next_offset == 4
        assert report.truncation_reason == Damage.BAD_CRC.value == "record checksum mismatch"
        assert report.truncated_at == last
        assert report.bytes_truncated == file_size - last
        assert os.path.getsize(path) == last
    finally:
        log.close()


# -- 5. zero-filled tail ---------------------------------------------------


def test_zero_filled_tail_is_end_of_log(tmp_path):
    """Zeros after the data are preallocated room, not damage: the log ends at
    the first zero header, nothing is reported or cut, and appends go there."""
    write_log(tmp_path, 5)
    path = seg_path(tmp_path)
    size = cut_to_data(path)
    with open(path, "ab") as f:
        f.write(bytes(4096))

    log, report = Log.open(os.fspath(tmp_path))
    try:
        assert log.entries == 5 and log.next_offset == 5
        assert (report.bytes_truncated, report.truncated_at, report.truncation_reason) == (
            0,
            None,
            None,
        )
        assert os.path.getsize(path) == size + 4096  # the room is kept
        assert log.total_bytes == size
        assert [log.read(i).payload for i in range(5)] == [payload_of(i) for i in range(5)]
        log.append(b"into the room")
        log.sync()
        assert os.path.getsize(path) == size + 4096  # written inside it, no growth
    finally:
        log.close()
    log, report = Log.open(os.fspath(tmp_path))
    try:
        assert log.read(5).payload == b"into the room" and report.bytes_truncated == 0
    finally:
        log.close()


@pytest.mark.parametrize("zeros", [4096, 4 << 20])
def test_torn_write_into_a_zero_filled_tail_is_a_torn_tail(tmp_path, zeros):
    """A write into preallocated room cut short leaves the record's first bytes
    and zeros after them: that is a torn tail (reported and cut), at every
    byte of the record; a zero tail after a whole record (or in place of the
    whole record: nothing of it landed) is not."""
    src = tmp_path / "src"
    write_log(src, 5)
    end = cut_to_data(seg_path(src))
    good = record_positions(5)[4]
    with open(seg_path(src), "ab") as f:
        f.write(bytes(zeros))
    for kept in range(good, end + 1, 3 if zeros > 4096 else 1):
        d = tmp_path / f"kept{kept}"
        shutil.copytree(src, d)
        with open(seg_path(d), "r+b") as f:
            f.seek(kept)
            f.write(bytes(end - kept))  # the record's bytes from `kept` on never landed
        log, report = Log.open(os.fspath(d))
        try:
            whole, torn = kept == end, good < kept < end  # kept == good: nothing landed
            assert log.entries == (5 if whole else 4), kept
            assert report.bytes_truncated == (end + zeros - good if torn else 0), kept
            assert report.truncated_at == (good if torn else None), kept
        finally:
            log.close()
        shutil.rmtree(d)


# -- 6. corruption that is not a torn tail ---------------------------------
# One rotted record costs one record: a whole record failing its CRC with a
# valid record right after it (or ending a sealed segment) keeps its offset,
# is reported, and reads back invalid; everything else reads and appends on.


def assert_rot_kept(tmp_path, path: str, offset: int, byte: int, entries: int, **kw) -> None:
    size = os.path.getsize(path)
    log, report = Log.open(os.fspath(tmp_path), **kw)
    try:
        assert [(d.file, d.byte, d.offset) for d in report.damaged] == [
            (os.path.basename(path), byte, offset)
        ]
        assert report.bytes_truncated == 0 and os.path.getsize(path) == size  # nothing cut
        assert log.next_offset == entries
        assert log.read(offset).checksum_valid is False
        valid = [e.offset for e in log.scan(0, entries, 1 << 20) if e.checksum_valid]
        assert valid == [i for i in range(entries) if i != offset]
        assert log.append(b"after")[0] == entries
        log.sync()
    finally:
        log.close()


def test_rot_in_first_record_of_last_segment_is_kept(tmp_path):
    write_log(tmp_path, 5)
    path = seg_path(tmp_path)
    flip_byte(path, HEADER_SIZE + 2)
    assert_rot_kept(tmp_path, path, 0, 0, 5)


def test_rot_in_middle_record_of_last_segment_is_kept(tmp_path):
    write_log(tmp_path, 5)
    path = seg_path(tmp_path)
    pos = record_positions(5)[2]
    flip_byte(path, pos + HEADER_SIZE)
    assert_rot_kept(tmp_path, path, 2, pos, 5)


def test_damaged_length_field_in_last_segment_names_file_and_byte(tmp_path):
    write_log(tmp_path, 5)
    path = seg_path(tmp_path)
    size = os.path.getsize(path)
    pos = record_positions(5)[2]
    flip_byte(path, pos, 0x40)  # the length field: the record's end is unknown
    with pytest.raises(CorruptionError) as ei:
        Log.open(os.fspath(tmp_path))
    assert ei.value.path == path and ei.value.position == pos
    assert f"corruption in {path} at byte {pos}" in str(ei.value)
    assert os.path.getsize(path) == size  # nothing cut


def test_two_rotted_records_in_a_row_are_refused(tmp_path):
    write_log(tmp_path, 5)
    path = seg_path(tmp_path)
    first, second = record_positions(5)[1:3]
    flip_byte(path, first + HEADER_SIZE)
    flip_byte(path, second + HEADER_SIZE)
    with pytest.raises(CorruptionError) as ei:
        Log.open(os.fspath(tmp_path))
    assert ei.value.path == path and ei.value.position == first


def test_rot_in_unindexed_sealed_segment_is_kept(tmp_path):
    write_log(tmp_path, 10, max_segment_bytes=64)  # 18-byte records: 3 per segment
    drop_indexes(tmp_path)
    assert len(os.listdir(tmp_path)) == 4
    first = seg_path(tmp_path, 0)
    flip_byte(first, HEADER_SIZE + 1)
    assert_rot_kept(tmp_path, first, 0, 0, 10, max_segment_bytes=64)


def test_rot_in_last_record_of_sealed_segment_is_kept(tmp_path):
    # what is cut as a torn tail in the last segment is rot in a sealed one
    # (sealed segments were fsynced whole): kept, not cut
    write_log(tmp_path, 10, max_segment_bytes=64)
    drop_indexes(tmp_path)
    first = seg_path(tmp_path, 0)
    flip_byte(first, os.path.getsize(first) - 1)
    assert_rot_kept(tmp_path, first, 2, record_positions(3)[2], 10, max_segment_bytes=64)


@pytest.mark.parametrize("cut", [1, 5, 10])
def test_truncated_sealed_segment_is_corruption(tmp_path, cut):
    write_log(tmp_path, 10, max_segment_bytes=64)
    first = seg_path(tmp_path, 0)
    size = os.path.getsize(first)
    os.truncate(first, size - cut)
    with pytest.raises(CorruptionError) as ei:
        Log.open(os.fspath(tmp_path), max_segment_bytes=64)
    assert ei.value.path == first
    assert ei.value.position == record_positions(3)[2]
    assert os.path.getsize(first) == size - cut  # not silently cut


def test_sealed_segment_cut_at_record_boundary_is_corruption(tmp_path):
    write_log(tmp_path, 10, max_segment_bytes=64)
    first = seg_path(tmp_path, 0)
    os.truncate(first, record_positions(3)[2])  # drops a whole record
    with pytest.raises(CorruptionError) as ei:
        Log.open(os.fspath(tmp_path), max_segment_bytes=64)
    assert ei.value.path == seg_path(tmp_path, 3)
    assert "a gap or overlap): entries 2 to 2 are gone" in str(ei.value)


# -- 7. segment roll -------------------------------------------------------


def test_segment_roll(tmp_path):
    limit = 100
    small = b"p" * 12  # 20-byte records: exactly 5 fill a segment
    log, _ = Log.open(os.fspath(tmp_path), max_segment_bytes=limit)
    try:
        for i in range(23):
            off, _ = log.append(small)
            assert off == i
        big_off, _ = log.append(b"B" * 250)
        assert big_off == 23
        after_off, _ = log.append(small)
        assert after_off == 24
        log.sync()

        expect_bases = [0, 5, 10, 15, 20, 23, 24]
        sealed_indexes = [segment_name(b).replace(".log", ".idx") for b in expect_bases[:-1]]
        expect_files = sorted([segment_name(b) for b in expect_bases] + sealed_indexes)
        assert sorted(os.listdir(tmp_path)) == expect_files
        infos = log.segments()
        assert [s.file for s in infos] == [segment_name(b) for b in expect_bases]
        assert [s.start_offset for s in infos] == expect_bases
        assert [s.end_offset for s in infos] == [4, 9, 14, 19, 22, 23, 24]
        assert [s.entries for s in infos] == [5, 5, 5, 5, 3, 1, 1]
        assert [s.sealed for s in infos] == [True] * 6 + [False]
        for s in infos[:5]:
            assert s.size_bytes <= limit
            assert s.size_bytes == os.path.getsize(tmp_path / s.file)
        assert infos[5].size_bytes == HEADER_SIZE + 250
        assert log.read(23).payload == b"B" * 250
        assert log.segment_count == 7
    finally:
        log.close()

    log, report = Log.open(os.fspath(tmp_path), max_segment_bytes=limit)
    try:
        assert report.segments == 7 and report.bytes_truncated == 0
        infos = log.segments()
        assert [s.sealed for s in infos] == [True] * 6 + [False]
        assert [s.entries for s in infos] == [5, 5, 5, 5, 3, 1, 1]
        assert all(log.read(i).checksum_valid for i in range(25))
        assert log.read(23).payload == b"B" * 250
    finally:
        log.close()


def test_big_first_record_stays_in_empty_segment(tmp_path):
    log, _ = Log.open(os.fspath(tmp_path), max_segment_bytes=50)
    try:
        assert log.append(b"x" * 200)[0] == 0
        assert log.append(b"y")[0] == 1
        log.sync()
        infos = log.segments()
        assert [(s.start_offset, s.entries, s.sealed) for s in infos] == [
            (0, 1, True),
            (1, 1, False),
        ]
    finally:
        log.close()


def test_empty_segment_info(tmp_path):
    log, _ = Log.open(os.fspath(tmp_path))
    try:
        (info,) = log.segments()
        assert info.end_offset is None and info.entries == 0 and info.size_bytes == 0
        assert info.file == segment_name(0) and info.sealed is False
    finally:
        log.close()


# -- 8. gap between segments -----------------------------------------------


def test_gap_between_segments(tmp_path):
    write_log(tmp_path, 10, max_segment_bytes=64)
    os.unlink(seg_path(tmp_path, 3))
    with pytest.raises(CorruptionError) as ei:
        Log.open(os.fspath(tmp_path), max_segment_bytes=64)
    assert ei.value.path == seg_path(tmp_path, 6)
    assert "gap" in str(ei.value)


def test_overlap_between_segments(tmp_path):
    write_log(tmp_path, 10, max_segment_bytes=64)
    os.rename(seg_path(tmp_path, 6), seg_path(tmp_path, 5))
    with pytest.raises(CorruptionError) as ei:
        Log.open(os.fspath(tmp_path), max_segment_bytes=64)
    assert ei.value.path == seg_path(tmp_path, 5)
    assert "overlap" in str(ei.value)


def test_non_segment_files_ignored(tmp_path):
    write_log(tmp_path, 3)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "123.log").write_bytes(b"junk")
    log, report = Log.open(os.fspath(tmp_path))
    try:
        assert report.segments == 1 and log.next_offset == 3
    finally:
        log.close()


# -- 9. readonly -----------------------------------------------------------


def test_readonly_reports_torn_tail_without_cutting(tmp_path):
    write_log(tmp_path, 5)
    path = seg_path(tmp_path)
    size = cut_to_data(path)
    os.truncate(path, size - 3)
    before = sorted(os.listdir(tmp_path))

    log, report = Log.open(os.fspath(tmp_path), readonly=True)
    try:
        assert report.bytes_truncated == HEADER_SIZE + len(payload_of(4)) - 3
        assert report.truncated_at == record_positions(5)[4]
        assert log.entries == 4 and log.next_offset == 4
        assert log.read(3).payload == payload_of(3)
    finally:
        log.close()
    assert os.path.getsize(path) == size - 3
    assert sorted(os.listdir(tmp_path)) == before

    # a writable open cuts it afterwards
    log, report = Log.open(os.fspath(tmp_path))
    log.close()
    assert os.path.getsize(path) == record_positions(5)[4]


def test_readonly_nonexistent_dir_creates_nothing(tmp_path):
    missing = tmp_path / "missing" / "wal"
    log, report = Log.open(os.fspath(missing), readonly=True)
    try:
        assert not (tmp_path / "missing").exists()
        assert report.segments == 0 and report.entries_recovered == 0
        assert log.entries == 0 and log.first_offset == 0 and log.next_offset == 0
        assert log.scan(0, 10, 1000) == []
        with pytest.raises(OffsetOutOfRange):
            log.read(0)
    finally:
        log.close()
    assert os.listdir(tmp_path) == []


def test_readonly_empty_dir_segments(tmp_path):
    # Regression: a readonly log over a wal/ with no segment files (a crash
    # between makedirs and the first segment) once raised IndexError here.
    empty = tmp_path / "wal"
    empty.mkdir()
    log, _ = Log.open(os.fspath(empty), readonly=True)
    try:
        assert log.segments() == []
        assert log.total_bytes == 0
    finally:
        log.close()
    assert os.listdir(empty) == []


# -- 10. read / scan -------------------------------------------------------


def test_read_out_of_range(tmp_path):
    write_log(tmp_path, 5)
    log, _ = Log.open(os.fspath(tmp_path))
    try:
        for bad in (5, 6, 1000, -1):
            with pytest.raises(OffsetOutOfRange) as ei:
                log.read(bad)
            assert isinstance(ei.value, WalError)
            assert ei.value.offset == bad
            assert ei.value.first_offset == 0
            assert ei.value.next_offset == 5
        assert "not written yet" in str(OffsetOutOfRange(5, 0, 5))
        assert "compacted" in str(OffsetOutOfRange(-1, 0, 5))
        with pytest.raises(OffsetOutOfRange):
            log.scan(6, 10, 1000)
    finally:
        log.close()


def test_read_compacted_offset(tmp_path):
    write_log(tmp_path, 10, max_segment_bytes=64)
    os.unlink(seg_path(tmp_path, 0))  # as compaction would
    log, _ = Log.open(os.fspath(tmp_path), max_segment_bytes=64)
    try:
        assert log.first_offset == 3 and log.next_offset == 10 and log.entries == 7
        with pytest.raises(OffsetOutOfRange) as ei:
            log.read(2)
        assert (ei.value.first_offset, ei.value.next_offset) == (3, 10)
        assert "compacted" in str(ei.value)
        assert log.read(3).payload == payload_of(3)
    finally:
        log.close()


def test_scan_limits(tmp_path):
    rec = HEADER_SIZE + len(payload_of(0))  # 18
    write_log(tmp_path, 10, max_segment_bytes=64)  # 3 per segment
    log, _ = Log.open(os.fspath(tmp_path), max_segment_bytes=64)
    try:
        got = log.scan(0, 100, 10**6)
        assert [e.offset for e in got] == list(range(10))
        assert [e.payload for e in got] == [payload_of(i) for i in range(10)]
        assert all(e.checksum_valid for e in got)

        assert [e.offset for e in log.scan(2, 4, 10**6)] == [2, 3, 4, 5]  # crosses segments
        assert [e.offset for e in log.scan(0, 1, 10**6)] == [0]
        assert log.scan(0, 0, 10**6) == []
        # byte budget: at least one entry, then only whole records that fit
        assert [e.offset for e in log.scan(0, 100, 0)] == [0]
        assert [e.offset for e in log.scan(0, 100, rec)] == [0]
        assert [e.offset for e in log.scan(0, 100, 2 * rec - 1)] == [0]
        assert [e.offset for e in log.scan(0, 100, 2 * rec)] == [0, 1]
        assert [e.offset for e in log.scan(1, 100, 4 * rec)] == [1, 2, 3, 4]
        assert [e.offset for e in log.scan(9, 100, 10**6)] == [9]
        assert log.scan(10, 100, 10**6) == []
    finally:
        log.close()


def test_scan_returns_one_big_entry(tmp_path):
    log, _ = Log.open(os.fspath(tmp_path))
    try:
        log.append(b"A" * 1000)
        log.append(b"b")
        log.append(b"c")
        got = log.scan(0, 10, 100)
        assert len(got) == 1 and got[0].payload == b"A" * 1000 and got[0].checksum_valid
        assert [e.payload for e in log.scan(1, 10, 100)] == [b"b", b"c"]
        assert log.scan(3, 10, 100) == []
    finally:
        log.close()


def test_read_staged_entry_before_sync(tmp_path):
    log, _ = Log.open(os.fspath(tmp_path))
    try:
        off, crc = log.append(b"staged")
        e = log.read(off)
        assert (e.payload, e.crc, e.checksum_valid) == (b"staged", crc, True)
    finally:
        log.close()


# -- 11. bit rot after open ------------------------------------------------


def test_bit_rot_detected_on_read(tmp_path):
    write_log(tmp_path, 5)
    log, _ = Log.open(os.fspath(tmp_path))
    try:
        assert all(log.read(i).checksum_valid for i in range(5))
        flip_byte(seg_path(tmp_path), record_positions(5)[2] + HEADER_SIZE + 4)
        assert log.read(2).checksum_valid is False
        assert log.read(2).payload != payload_of(2)
        assert [log.read(i).checksum_valid for i in (0, 1, 3, 4)] == [True] * 4
        assert [e.checksum_valid for e in log.scan(0, 10, 10**6)] == [
            True,
            True,
            False,
            True,
            True,
        ]
    finally:
        log.close()


def test_bit_rot_in_length_field_detected_on_read(tmp_path):
    write_log(tmp_path, 5)
    log, _ = Log.open(os.fspath(tmp_path))
    try:
        flip_byte(seg_path(tmp_path), record_positions(5)[1])  # low length byte
        assert log.read(1).checksum_valid is False
        assert log.read(0).checksum_valid and log.read(2).checksum_valid
    finally:
        log.close()


# -- 12. durable_offset ----------------------------------------------------


def test_durable_offset(tmp_path):
    log, _ = Log.open(os.fspath(tmp_path))
    try:
        assert log.durable_offset == log.next_offset == 0
        log.append(b"a")
        log.append(b"b")
        assert log.next_offset == 2 and log.durable_offset == 0
        log.flush()
        assert log.durable_offset == 0  # written, not fsynced
        log.sync()
        assert log.durable_offset == log.next_offset == 2
        log.append(b"c")
        assert log.durable_offset == 2 and log.next_offset == 3
        log.sync()
        assert log.durable_offset == 3
        log.sync()  # nothing new
        assert log.durable_offset == 3
    finally:
        log.close()
    log, _ = Log.open(os.fspath(tmp_path))
    try:
        assert log.durable_offset == log.next_offset == 3
    finally:
        log.close()


def test_durable_offset_across_roll(tmp_path):
    log, _ = Log.open(os.fspath(tmp_path), max_segment_bytes=20)
    try:
        for _ in range(5):
            log.append(b"0123456789")  # 18 bytes: one per segment
        assert log.segment_count == 5
        assert log.durable_offset == 0
        log.sync()
        assert log.durable_offset == log.next_offset == 5
    finally:
        log.close()


# -- 13. data directory ----------------------------------------------------


def test_datadir_lock_refuses_second_holder(tmp_path):
    d1 = DataDir(os.fspath(tmp_path / "data"))
    fd = d1.lock("walnode pid 4242")
    try:
        d2 = DataDir(os.fspath(tmp_path / "data"))
        with pytest.raises(DirectoryLocked) as ei:
            d2.lock("walnode pid 9999")
        err = ei.value
        assert isinstance(err, WalError)
        assert err.holder == f"walnode pid 4242 on {socket.gethostname()}"
        assert err.path == d1.path
        assert "walnode pid 4242" in str(err)
        assert "9999" not in str(err)
        with open(os.path.join(d1.path, "LOCK")) as f:  # refusal did not overwrite
            assert f.read().startswith("walnode pid 4242")
    finally:
        os.close(fd)
    # released: a new holder gets it
    fd2 = DataDir(os.fspath(tmp_path / "data")).lock("walnode pid 7")
    try:
        with open(os.path.join(d1.path, "LOCK")) as f:
            assert f.read() == f"walnode pid 7 on {socket.gethostname()}\n"
    finally:
        os.close(fd2)


def test_datadir_layout_and_meta(tmp_path):
    path = tmp_path / "data"
    d = DataDir(os.fspath(path))
    assert path.is_dir()
    assert d.wal_dir == os.path.join(d.path, "wal")
    assert d.snapshot_dir == os.path.join(d.path, "snapshots")
    assert d.read_meta() == {"format": 1}
    assert d.update_meta(node_id="n1", max_segment_bytes=4096) == {
        "format": 1,
        "node_id": "n1",
        "max_segment_bytes": 4096,
    }
    d.update_meta(node_id="n2")
    assert not os.path.exists(d.meta_path + ".tmp")
    again = DataDir(os.fspath(path))
    assert again.read_meta() == {"format": 1, "node_id": "n2", "max_segment_bytes": 4096}


def test_datadir_create_false(tmp_path):
    DataDir(os.fspath(tmp_path / "nope"), create=False)
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b'{"format": 1'])
def test_datadir_invalid_meta(tmp_path, raw):
    d = DataDir(os.fspath(tmp_path))
    with open(d.meta_path, "wb") as f:
        f.write(raw)
    with pytest.raises(WalError, match="not a JSON object"):
        d.read_meta()
    with pytest.raises(WalError):
        d.update_meta(node_id="x")
    with open(d.meta_path, "rb") as f:
        assert f.read() == raw  # not overwritten


def test_datadir_wrong_format(tmp_path):
    d = DataDir(os.fspath(tmp_path))
    with open(d.meta_path, "w") as f:
        f.write('{"format": 2}')
    with pytest.raises(WalError, match="format 2"):
        d.read_meta()


@pytest.mark.parametrize("raw", [b"null", b"[1, 2]"])
def test_datadir_meta_not_an_object(tmp_path, raw):
    # Regression: valid JSON that is not an object once raised AttributeError
    # instead of the WalError every other damage to walnode.meta gets.
    d = DataDir(os.fspath(tmp_path))
    with open(d.meta_path, "wb") as f:
        f.write(raw)
    with pytest.raises(WalError):
        d.read_meta()


# -- 14. state machine -----------------------------------------------------


def test_replay_rules():
    entries = [
        ("set a=1", True),
        ("set b=2", True),
        ("set k=", True),
        ("set c=x=y", True),
        ("del b", True),
        ("set a b=1", True),  # space in key: ignored
        ("set =v", True),  # empty key: ignored
        ("set nokey", True),  # no '=': ignored
        ("hello world", True),  # not a command: ignored
        ("del missing", True),
        ("del a b", True),
        ("set a=2", True),
    ]
    assert replay(entries) == (12, 0, {"a": "2", "k": "", "c": "x=y"})


def test_replay_stops_at_first_invalid():
    entries = [
        ("set a=1", True),
        ("set b=2", False),
        ("set c=3", True),
        ("del a", True),
    ]
    assert replay(entries) == (1, 3, {"a": "1"})
    assert replay([("set a=1", False)]) == (0, 1, {})
    assert replay([]) == (0, 0, {})


def test_replay_of_a_real_log(tmp_path):
    log, _ = Log.open(os.fspath(tmp_path))
    try:
        for p in (b"set x=1", b"set y=2", b"del x", b"set z=3"):
            log.append(p)
        log.sync()
        flip_byte(seg_path(tmp_path), log.total_bytes - 1)  # rot in z
        entries = log.scan(0, 10, 10**6)
        pairs = [(e.payload.decode("utf-8", "replace"), e.checksum_valid) for e in entries]
        assert replay(pairs) == (3, 1, {"y": "2"})
    finally:
        log.close()


@pytest.mark.parametrize("record_index", [0, 2])
def test_flipped_length_field_mid_segment_is_corruption_not_a_torn_tail(tmp_path, record_index):
    """A bit flip in a length field makes the record 'run past the end of the
    file'; cutting there would drop the acknowledged records behind it."""
    d = os.fspath(tmp_path / "wal")
    log, _ = Log.open(d)
    for i in range(5):
        log.append(f"payload-{i}".encode())
    log.sync()
    log.close()
    (seg,) = [os.path.join(d, f) for f in os.listdir(d)]
    size_before = os.path.getsize(seg)
    position = record_index * (8 + len("payload-0"))
    with open(seg, "r+b") as f:
        # the high byte of the length (0x20: bits 31 and 30 are record kinds, LOST_FLAG and
        # EPOCH_FLAG, and a flip there is caught by the CRC, which covers the length bytes)
        f.seek(position + 3)
        f.write(b"\x20")
    with pytest.raises(CorruptionError) as err:
        Log.open(d)
    assert err.value.path == seg and err.value.position == position
    assert os.path.getsize(seg) == size_before  # nothing was cut


def test_a_full_disk_while_preallocating_falls_back_to_a_plain_append(tmp_path, monkeypatch):
    """No room for the zeros (ENOSPC from their pwrite, after a part of them
    landed): they are cut off again and the batch is appended as without
    preallocation; nothing is lost or reported."""
    real = os.pwrite

    def full(fd, data, pos):
        real(fd, data[: len(data) // 2], pos)  # a short part of the zeros lands
        raise OSError(errno.ENOSPC, "No space left on device")

    log, _ = Log.open(os.fspath(tmp_path))
    try:
        monkeypatch.setattr(os, "pwrite", full)
        log.append(b"entry")
        log.sync()
        monkeypatch.setattr(os, "pwrite", real)
        assert os.path.getsize(seg_path(tmp_path)) == log.total_bytes == HEADER_SIZE + 5
        assert log.read(0).payload == b"entry"
    finally:
        log.close()
    log, report = Log.open(os.fspath(tmp_path))
    try:
        assert log.next_offset == 1 and report.bytes_truncated == 0
    finally:
        log.close()
