"""The writer's sync thread (actors/writer.py, Commits): a batch's replies
leave only after its fdatasync returned, never before, and before any reply
of a batch staged while it ran; a failed fdatasync answers nothing.

The writer's commit logic runs in this process on a real log in a temporary
directory, with the real sync thread; only the sockets are stand-ins that
record what would have been sent, and os.fdatasync is held (then let run, or
failed) so that what happens while it runs can be seen.
"""

from __future__ import annotations

import errno
import os
import threading

import pytest
import zmq

from actors import messages as m
from actors.config import FsyncPolicy
from actors.writer import PIPELINE_MIN_APPENDS, Commits, Notices, Writer
from wal import DataDir, Log


class Recorder:
    """A router or notice socket that keeps what is sent to it."""

    def __init__(self) -> None:
        self.sent: list = []

    def send_multipart(self, frames: list) -> None:
        self.sent.append(m.unpack(frames[1]))

    def send(self, data: bytes, flags: int = 0) -> None:
        if flags & zmq.SNDMORE:  # a ROUTER's identity frame (sockets.send_to)
            return
        self.sent.append(m.unpack(data))


@pytest.fixture
def held_fdatasync(monkeypatch):
    """os.fdatasync blocks until `release` is set; `fail` makes it raise EIO."""
    real = os.fdatasync
    state = {"entered": threading.Event(), "release": threading.Event(), "fail": False}

    def fdatasync(fd: int) -> None:
        if threading.current_thread().name == "fdatasync":  # the sync thread's calls only
            state["entered"].set()
            assert state["release"].wait(10)
            if state["fail"]:
                raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return state


def _commits(tmp_path) -> tuple[Commits, Writer, Recorder]:
    datadir = DataDir(str(tmp_path / "d"))
    datadir.lock("test writer")
    wal, _ = Log.open(datadir.wal_dir)
    writer = Writer(datadir, wal, FsyncPolicy.parse("always"))
    return Commits(writer, Notices(Recorder())), writer, Recorder()


def _appends(first_rid: int, count: int) -> list:
    return [[first_rid + i, m.OP_APPEND, b"set k=%d" % i] for i in range(count)]


def test_replies_wait_for_their_fdatasync_and_keep_batch_order(tmp_path, held_fdatasync):
    commits, writer, router = _commits(tmp_path)
    batch = PIPELINE_MIN_APPENDS + 8
    commits.handle(router, b"front", _appends(0, batch))
    commits.step()  # flushed, its fdatasync handed to the thread
    assert held_fdatasync["entered"].wait(10)
    commits.handle(router, b"front", _appends(batch, 5))  # staged while it runs
    commits.step()
    assert router.sent == [], "a reply left before its batch's fdatasync returned"
    assert writer.log.durable_offset == 0

    held_fdatasync["release"].set()
    commits.inflight[1].done.wait(10)
    commits.step()  # the first batch answered; the second begins (inline: fewer than 32)
    first, second = router.sent
    assert [r[0] for r in first[1]] == list(range(batch))
    assert [r[0] for r in second[1]] == list(range(batch, batch + 5))
    assert all(code == m.OK for _, code, _ in first[1] + second[1])
    assert writer.log.durable_offset == batch + 5
    writer.log.close()


def test_a_failed_fdatasync_in_the_thread_answers_nothing(tmp_path, held_fdatasync):
    commits, writer, router = _commits(tmp_path)
    commits.handle(router, b"front", _appends(0, PIPELINE_MIN_APPENDS))
    commits.step()
    assert held_fdatasync["entered"].wait(10)
    commits.handle(router, b"front", _appends(PIPELINE_MIN_APPENDS, 3))
    held_fdatasync["fail"] = True
    held_fdatasync["release"].set()
    commits.inflight[1].done.wait(10)
    with pytest.raises(OSError, match="Input/output error"):  # the writer exits on it
        commits.step()
    assert router.sent == []
    assert writer.log.durable_offset == 0
