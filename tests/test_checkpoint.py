"""The newest segment's checkpoint (wal/checkpoint.py): opening the log takes
the positions of its synced prefix from there, scanning only the rest, and
only while the prefix's bytes still match the CRC it recorded."""

from __future__ import annotations

import os
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from tests.damage import flip_byte
from wal import Log, checkpoint
from wal import segment as segment_module
from wal import tail as tail_module
from wal.segment import segment_name
from wal.tail import LogTail


def payload(i: int) -> bytes:
    return b"set k%d=%d" % (i, i)


class InlineThread:
    """A segment's checkpoint written on the caller's thread: in a background thread (the
    product's way) a checkpoint is skipped while the previous one is still being written, so
    on a loaded machine the last one lagged by kilobytes and the tests' counts moved with it."""

    def __init__(
        self, target: Callable[..., object], args: tuple = (), daemon: bool = False
    ) -> None:
        self.target, self.args = target, args

    def start(self) -> None:
        self.target(*self.args)

    def is_alive(self) -> bool:
        return False

    def join(self) -> None:
        pass


@pytest.fixture
def small_checkpoints(monkeypatch):
    """A checkpoint every 1 KiB, each written before the next append."""
    monkeypatch.setattr(checkpoint, "EVERY_BYTES", 1024)
    monkeypatch.setattr(segment_module, "threading", SimpleNamespace(Thread=InlineThread))


def fill(wal: str, first: int, last: int) -> None:
    log, _ = Log.open(wal)
    try:
        for i in range(first, last):
            log.append(payload(i))
            if i % 10 == 9:
                log.sync()
        log.sync()
    finally:
        log.close()


def reopen(wal: str) -> tuple[list[bytes], object]:
    log, report = Log.open(wal)
    try:
        return [e.payload for e in log.scan(0, 10**6, 1 << 30)], report
    finally:
        log.close()


def test_a_restart_takes_the_synced_prefix_from_the_checkpoint(tmp_path, small_checkpoints):
    wal = os.fspath(tmp_path)
    fill(wal, 0, 500)
    assert os.path.exists(os.path.join(wal, "00000000000000000000.ckpt"))
    got, report = reopen(wal)
    assert got == [payload(i) for i in range(500)]
    assert report.checkpoint_bytes > 0  # not read: taken as stored
    fill(wal, 500, 600)  # the reopened log appends after it, and checkpoints again
    got, report = reopen(wal)
    assert got == [payload(i) for i in range(600)] and report.checkpoint_bytes > 0


def test_a_prefix_changed_since_its_checkpoint_is_scanned(tmp_path, small_checkpoints):
    """Rot in the checkpointed prefix: the CRC no longer holds, so the segment is
    scanned whole and the rotted record found (trusting the checkpoint would
    hide it)."""
    wal = os.fspath(tmp_path)
    fill(wal, 0, 500)
    flip_byte(os.path.join(wal, segment_name(0)), 10 * 16 + 12)  # a payload byte of entry 10
    got, report = reopen(wal)
    assert report.checkpoint_bytes == 0
    assert [d.offset for d in report.damaged] == [10]
    assert len(got) == 500


def test_a_prefix_cut_and_written_again_is_scanned(tmp_path, small_checkpoints):
    """The records under a checkpoint cut off and others written in their place
    (a tail truncation): the stored positions are not taken."""
    wal = os.fspath(tmp_path)
    fill(wal, 0, 500)
    ckpt = os.path.join(wal, "00000000000000000000.ckpt")
    with open(ckpt, "rb") as f:
        saved = f.read()
    seg = os.path.join(wal, segment_name(0))
    os.truncate(seg, 100)  # inside entry 6 or so
    log, _ = Log.open(wal)  # the torn end cut
    try:
        n = log.next_offset
        for i in range(n, 400):
            log.append(b"other %d" % i)
        log.sync()
    finally:
        log.close()
    with open(ckpt, "wb") as f:  # the old checkpoint, as if the cut had not removed it
        f.write(saved)
    got, report = reopen(wal)
    assert report.checkpoint_bytes == 0
    assert got == [payload(i) for i in range(n)] + [b"other %d" % i for i in range(n, 400)]


def test_only_the_newest_segment_keeps_a_checkpoint(tmp_path, small_checkpoints):
    wal = os.fspath(tmp_path)
    log, _ = Log.open(wal, max_segment_bytes=4096)
    try:
        for i in range(600):
            log.append(payload(i))
            log.sync()
    finally:
        log.close()
    Log.open(wal, max_segment_bytes=4096)[0].close()
    ckpts = [n for n in os.listdir(wal) if n.endswith(checkpoint.SUFFIX)]
    newest = max(n for n in os.listdir(wal) if n.endswith(".log"))
    assert ckpts in ([], [newest.replace(".log", checkpoint.SUFFIX)])


def test_the_tail_finds_its_place_through_the_checkpoint(tmp_path, small_checkpoints):
    """The compactor's tailer, started at an offset deep in the newest segment,
    takes the record's byte from the checkpoint, not from a walk of every
    header before it; past the prefix it walks the rest. The prefix's records
    are read as runs at the checkpoint's positions (from offset 0 too), so
    only those past it are decoded one by one (decode_at)."""
    wal = os.fspath(tmp_path)
    fill(wal, 0, 500)
    reads = []
    decoded = []
    real = os.pread
    real_decode = tail_module.decode_at

    def counting(fd, n, pos):
        reads.append(pos)
        return real(fd, n, pos)

    def counting_decode(buf, pos):
        decoded.append(pos)
        return real_decode(buf, pos)

    seg = os.path.join(wal, segment_name(0))
    with open(seg, "rb") as f:
        prefix = checkpoint.load(checkpoint.path_for(seg), 0, f.read())
    assert prefix is not None and len(prefix.positions) > 100
    for start in (0, 137, 499):
        tail = LogTail(wal, start)
        try:
            os.pread = counting
            tail_module.decode_at = counting_decode
            got = list(tail.read(500))
        finally:
            os.pread = real
            tail_module.decode_at = real_decode
            tail.close()
        assert got == [(i, payload(i)) for i in range(start, 500)]
        # not one per record skipped: at most those after the last checkpoint
        # (1 KiB of ~17-byte records), and the reads of the records themselves
        assert len(reads) < 70, (start, len(reads))
        # one by one only past the prefix (whose length depends on when the
        # writer's background checkpoint last ran)
        assert len(decoded) <= 500 - len(prefix.positions), (start, len(decoded))
        reads.clear()
        decoded.clear()
