"""A snapshot is written in pieces (wal/snapshot.py): each piece's writeback
started as it is written and the previous one's waited for, so the fsync
that makes it durable never queues a whole large file ahead of the writer's
fdatasyncs; a writeback error on the way fails the snapshot."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from wal import fsutil, snapshot

WAIT_ALL = 1 | 2 | 4  # SYNC_FILE_RANGE_WAIT_BEFORE | WRITE | WAIT_AFTER


def big_state() -> dict[str, str]:
    return {f"key{i}": "v" * 100 for i in range(100_000)}  # about 11 MB encoded


def test_a_large_snapshot_is_written_in_pieces_with_writeback_started(tmp_path, monkeypatch):
    calls: list[tuple[int, int, int]] = []
    real = fsutil._sync_file_range
    assert real is not None, "libc has sync_file_range on Linux"

    def recording(fd, offset, length, flags):
        calls.append((offset, length, flags))
        return real(fd, offset, length, flags)

    monkeypatch.setattr(fsutil, "_sync_file_range", recording)
    state = big_state()
    snap = snapshot.write(str(tmp_path), 7, state)
    started = [(o, n) for o, n, f in calls if f == 2]
    waited = [(o, n) for o, n, f in calls if f == WAIT_ALL]
    assert snap.size_bytes > 2 * snapshot.PIECE_BYTES
    # every byte's writeback was started, in order, a piece at a time
    assert started[0][0] == 0 and sum(n for _, n in started) == snap.size_bytes
    assert all(a + n == b for (a, n), (b, _) in zip(started, started[1:], strict=False))
    assert max(n for _, n in started) <= snapshot.PIECE_BYTES
    # each piece but the last was waited for before the next was written further
    assert waited == started[:-1]
    with open(snap.path, "rb") as f:
        assert snapshot.decode(f.read()) == (7, state)


def test_a_writeback_error_fails_the_snapshot(tmp_path, monkeypatch):
    """sync_file_range reports a writeback error once per open file: the fsync
    after it would not see it again, so it must fail the snapshot itself."""

    def failing(fd, offset, length, flags):
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(fsutil, "_sync_file_range", failing)
    with pytest.raises(OSError) as err:
        snapshot.write(str(tmp_path), 7, big_state())
    assert err.value.errno == errno.EIO
    assert snapshot.list_offsets(str(tmp_path)) == []
    assert not os.path.exists(os.path.join(str(tmp_path), snapshot.snapshot_name(7)))
