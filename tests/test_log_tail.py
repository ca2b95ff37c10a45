"""wal/tail.py, the compactor's reader of the log, on a preallocated segment."""

from __future__ import annotations

import os

import pytest

from wal import Log, WalError
from wal import tail as tail_module
from wal.segment import segment_name
from wal.tail import LogTail


def test_the_tail_stops_at_the_preallocated_zeros(tmp_path):
    """The newest segment is zero-filled past its data: the tailer reads every
    entry, and asked for one more it finds none (never a damaged entry made
    of zeros), then reads it once it is written."""
    wal = os.fspath(tmp_path)
    log, _ = Log.open(wal)
    try:
        for i in range(5):
            log.append(b"set k%d=%d" % (i, i))
        log.sync()
        assert os.path.getsize(os.path.join(wal, segment_name(0))) > log.total_bytes
        tail = LogTail(wal, 0)
        try:
            assert list(tail.read(5)) == [(i, b"set k%d=%d" % (i, i)) for i in range(5)]
            with pytest.raises(WalError, match="entry 5 is not in"):
                list(tail.read(6))
            assert tail.offset == 5 and tail.damage_at is None
            log.append(b"set k5=5")
            log.sync()
            assert list(tail.read(6)) == [(5, b"set k5=5")]
        finally:
            tail.close()
    finally:
        log.close()


def test_sealed_segments_are_read_in_runs(tmp_path, monkeypatch):
    """A sealed segment is followed at its index's positions a chunk at a time
    (read_runs: one run per chunk, here per segment), its records checked in
    one loop: only the newest segment's records (no checkpoint yet) are
    decoded one by one."""
    wal = os.fspath(tmp_path)
    log, _ = Log.open(wal, max_segment_bytes=4096)
    try:
        expected = []
        for i in range(600):
            expected.append(b"set k%d=%d" % (i % 7, i))
            log.append(expected[-1])
        log.sync()
        segments = log.segments()
        assert len(segments) == 3 and all(s.sealed for s in segments[:-1])
        decoded = []
        real = tail_module.decode_at
        monkeypatch.setattr(
            tail_module, "decode_at", lambda buf, pos: decoded.append(pos) or real(buf, pos)
        )
        tail = LogTail(wal, 0)
        try:
            runs = list(tail.read_runs(600))
        finally:
            tail.close()
        assert [p for payloads, _ in runs for p in payloads] == expected
        assert all(damaged == [] for _, damaged in runs)
        assert len(runs) == len(segments)
        assert len(decoded) <= segments[-1].entries + 1  # the newest's, and the zeros after
    finally:
        log.close()
