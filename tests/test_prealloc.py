"""The zero-fill ahead of the active segment's records (wal/prealloc.py,
docs/FORMAT.md "Preallocation"): done by a background thread, durable by its
own fsync, never overlapping the records the writer writes, and a failed
fill never taken for room."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from tests.test_durability_calls import cut, traced
from wal import Log, prealloc
from wal.segment import segment_name

LIMIT = 64 << 10  # a segment limit small enough for a test: fills of 16 KiB
RECORD = 8 + 100  # a 100-byte payload's record


def fill_log(log: Log, count: int, first: int = 0) -> None:
    for i in range(first, first + count):
        log.append(b"%03d" % i + b"x" * 97)
    log.flush()


def test_the_zeros_ahead_are_written_off_the_writers_thread(tmp_path, monkeypatch):
    """Only a segment's first chunk (no room at all) is zero-filled by the
    writer's own thread; every later chunk by a fill thread, ahead of the
    records, so an append never waits for it."""
    zero_writes: list[tuple[int, int]] = []  # (thread, bytes)
    real_pwrite = os.pwrite

    def pwrite(fd, data, pos):
        if not any(data):
            zero_writes.append((threading.get_ident(), len(data)))
        return real_pwrite(fd, data, pos)

    monkeypatch.setattr(os, "pwrite", pwrite)
    log, _ = Log.open(str(tmp_path), max_segment_bytes=LIMIT)
    try:
        for i in range(400):  # one record per commit, 43 KiB in all: no roll
            fill_log(log, 1, i)
            log.sync()
        log.active.wait_for_fill()
    finally:
        log.close()
    writer = threading.get_ident()
    inline = sum(n for t, n in zero_writes if t == writer)
    ahead = sum(n for t, n in zero_writes if t != writer)
    assert inline == prealloc.first_chunk_for(LIMIT)
    assert ahead >= 400 * RECORD - inline  # every record after the first chunk went into them


def test_a_fill_ahead_is_durable_by_its_own_fsync(tmp_path):
    """The fill thread fsyncs its zeros: once it is done they are durable
    room with no append's fdatasync in between (which would otherwise carry
    the size change, the metadata preallocation is there to keep out of it)."""
    disk, said = traced(
        tmp_path,
        """
log, _ = Log.open(wal, max_segment_bytes=64 << 10)
for i in range(100):
    log.append(b"x" * 100)
log.flush()  # the first chunk inline, and a fill ahead started; no fdatasync
seg = log.active
fill = seg._fill
seg.wait_for_fill()
promise(fill=[fill.start, fill.end] if fill is not None else None)
os._exit(0)
""",
    )
    chunk = prealloc.chunk_for(LIMIT)
    assert said == {"fill": [chunk, 2 * chunk]}
    root = cut(tmp_path, disk)  # only what was synced
    assert os.path.getsize(os.path.join(root, "wal", segment_name(0))) == 2 * chunk


def test_the_writer_waits_for_a_fill_it_would_write_into(tmp_path, monkeypatch):
    """A batch that reaches past the durable zeros into a fill still in
    flight waits for that fill: written first, its records would be
    overwritten by the fill's zeros."""
    real_write_zeros = prealloc.write_zeros
    writer = threading.get_ident()

    def slow_write_zeros(fd, start, end):
        if threading.get_ident() != writer:
            time.sleep(0.3)  # the fill thread is slow: the writer gets there first
        real_write_zeros(fd, start, end)

    monkeypatch.setattr(prealloc, "write_zeros", slow_write_zeros)
    log, _ = Log.open(str(tmp_path), max_segment_bytes=LIMIT)
    try:
        fill_log(log, 100)  # 10.8 KiB of the first 16 KiB chunk: a fill of the next starts
        assert log.active._fill is not None
        fill_log(log, 100, 100)  # ends at 21.6 KiB, inside the fill's chunk
        log.sync()
        log.active.wait_for_fill()
        got = [log.read(i) for i in range(200)]
    finally:
        log.close()
    assert all(e.checksum_valid for e in got)
    assert [e.payload[:3] for e in got] == [b"%03d" % i for i in range(200)]


def test_a_failed_fill_is_raised_in_the_writer_never_taken_for_room(tmp_path, monkeypatch):
    """fsyncgate: a fill whose fsync failed is not retried or ignored; the
    writer's next write that needs it raises the error (the writer exits)."""
    real_fsync = os.fsync
    writer = threading.get_ident()

    def failing_fsync(fd):
        if threading.get_ident() != writer:
            raise OSError(errno.EIO, "injected: the fill's fsync failed")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    log, _ = Log.open(str(tmp_path), max_segment_bytes=LIMIT)
    try:
        fill_log(log, 100)  # starts a fill ahead, which fails
        with pytest.raises(OSError) as err:
            fill_log(log, 100, 100)  # needs the fill's chunk
        assert err.value.errno == errno.EIO
    finally:
        monkeypatch.setattr(os, "fsync", real_fsync)
        log.active._fill = None  # already raised
        log.close()


def test_a_fill_on_a_full_disk_cuts_its_zeros_and_appends_go_on(tmp_path, monkeypatch):
    """ENOSPC in the fill thread: its zeros are cut off again, no room is
    added, and the next batch past the room fills it on the writer's thread."""
    real_write_zeros = prealloc.write_zeros
    writer = threading.get_ident()

    def full_disk(fd, start, end):
        real_write_zeros(fd, start, start + 4096)  # a part got in, then the disk was full
        if threading.get_ident() != writer:
            raise OSError(errno.ENOSPC, "injected: no space left")
        real_write_zeros(fd, start, end)

    monkeypatch.setattr(prealloc, "write_zeros", full_disk)
    chunk = prealloc.chunk_for(LIMIT)
    log, _ = Log.open(str(tmp_path), max_segment_bytes=LIMIT)
    try:
        fill_log(log, 100)
        log.active.wait_for_fill()
        path = os.path.join(str(tmp_path), segment_name(0))
        assert os.path.getsize(path) == chunk  # the failed fill's zeros are gone
        fill_log(log, 100, 100)  # past the room: filled inline
        log.sync()
        assert [log.read(i).checksum_valid for i in range(200)] == [True] * 200
    finally:
        log.close()


def test_a_compacted_active_segment_keeps_room(tmp_path):
    """Compaction rewrites the active segment from the compaction offset: the
    copy gets a first chunk of zeros, fsynced with it, so the appends after a
    compaction write into room instead of waiting for a zero-fill."""
    log, _ = Log.open(str(tmp_path), max_segment_bytes=LIMIT)
    try:
        fill_log(log, 50)
        log.sync()
        log.truncate_before(20)
        path = os.path.join(str(tmp_path), segment_name(20))
        assert os.path.getsize(path) == 30 * RECORD + prealloc.first_chunk_for(LIMIT)
        fill_log(log, 10, 50)
        log.sync()
        assert [log.read(i).payload[:3] for i in range(20, 60)] == [
            b"%03d" % i for i in range(20, 60)
        ]
    finally:
        log.close()
    again, report = Log.open(str(tmp_path), max_segment_bytes=LIMIT)
    try:
        assert (again.first_offset, again.next_offset, report.bytes_truncated) == (20, 60, 0)
    finally:
        again.close()


def test_a_compaction_does_not_wait_for_the_fill_of_a_segment_it_deletes(tmp_path, monkeypatch):
    """The active segment a compaction rewrites is deleted with its fill
    still in flight: its zeros go with the file, and the compaction (on the
    writer's thread, appends waiting) does not wait for them."""
    release = threading.Event()
    real_write_zeros = prealloc.write_zeros

    def held_write_zeros(fd, start, end):
        if threading.current_thread().name == "zero-fill":
            release.wait(30)  # the fill thread is held until the test lets it go
        real_write_zeros(fd, start, end)

    monkeypatch.setattr(prealloc, "write_zeros", held_write_zeros)
    log, _ = Log.open(str(tmp_path), max_segment_bytes=LIMIT)
    try:
        fill_log(log, 100)
        log.sync()
        assert log.active._fill is not None
        compaction = threading.Thread(target=log.truncate_before, args=(50,), daemon=True)
        compaction.start()
        compaction.join(10)
        finished = not compaction.is_alive()
        release.set()
        compaction.join()
        assert finished, "the compaction waited for the deleted segment's fill"
        assert sorted(os.listdir(str(tmp_path))) == [segment_name(50), "LOG_START"]
        assert [log.read(i).payload[:3] for i in range(50, 100)] == [
            b"%03d" % i for i in range(50, 100)
        ]
    finally:
        release.set()
        log.close()


def test_no_zeros_are_written_under_fsync_never(node_factory, data_dir):
    """Under --fsync never no append is fdatasynced, so zeros ahead would only
    double the writes (and a fill's fsync would make durable what the policy
    leaves to the page cache): the segment holds its records and nothing more."""
    node = node_factory("--data-dir", data_dir, "--fsync", "never")
    node.init()
    for i in range(200):
        node.call_ok({"type": "wal_append", "payload": f"set k{i}=" + "v" * 90})
    info = node.call_ok({"type": "wal_info"})
    path = os.path.join(data_dir, "wal", segment_name(0))
    assert os.path.getsize(path) == info["total_bytes"]
    assert node.close() == 0
