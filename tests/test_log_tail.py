"""wal/tail.py, the compactor's reader of the log, on a preallocated segment."""

from __future__ import annotations

import os

import pytest

from wal import Log, WalError
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
