"""A front killed with requests in flight: every request still gets exactly one reply.

The dead front had read the lines from stdin (they are gone from the pipe);
its inbox in the run directory (actors/inbox.py) gives them to the next
front, which answers reads normally and state changes with error 13.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import signal

import pytest

from actors import inbox as inbox_module
from actors.inbox import Inbox, OverlongLine
from tests.nodeproc import wait_until


def feed(box: Inbox, data: bytes) -> list[tuple[int, bytes]]:
    """What the front does with stdin: take a chunk from a pipe, then split it."""
    r, w = os.pipe()
    try:
        os.write(w, data)
        return box.feed(box.take(r, 1 << 20))
    finally:
        os.close(r)
        os.close(w)


def test_inbox_returns_what_was_read_and_not_answered(tmp_path):
    box = Inbox(str(tmp_path), 1 << 20)
    lines = feed(box, b"one\ntwo\nthr")
    assert lines == [(0, b"one"), (4, b"two")]
    assert feed(box, b"ee\nfour") == [(8, b"three")]
    box.answered(4)
    box.sync_marks()
    again = Inbox(str(tmp_path), 1 << 20)  # as a restarted front finds it
    assert again.unanswered == [(0, b"one"), (8, b"three")]
    assert feed(again, b"!\n") == [(14, b"four!")]  # the half line read before is completed
    again.answered(0)
    again.answered(8)
    again.sync_marks()
    assert Inbox(str(tmp_path), 1 << 20).unanswered == [(14, b"four!")]


def test_inbox_compaction_keeps_exactly_the_open_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(inbox_module, "COMPACT_BYTES", 64)
    box = Inbox(str(tmp_path), 1 << 20)
    starts = [s for s, _ in feed(box, b"".join(b"line%03d\n" % i for i in range(40)))]
    for s in starts:
        if s not in (starts[25], starts[30]):
            box.answered(s)
    box.sync_marks()
    box.tidy()  # compacts: the inbox now starts at the oldest open line
    assert os.path.getsize(box.path) < 8 * 40
    feed(box, b"tail")
    again = Inbox(str(tmp_path), 1 << 20)
    assert again.unanswered == [(starts[25], b"line025"), (starts[30], b"line030")]


def test_inbox_steps_aside_when_its_disk_is_full(tmp_path, monkeypatch):
    box = Inbox(str(tmp_path), 1 << 20)
    feed(box, b"one\n")

    def full(*args: object, **kw: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "splice", full)
    assert feed(box, b"two\nthree\n") == [(4, b"two"), (8, b"three")]  # read all the same
    box.answered(4)
    box.sync_marks()
    assert not box.journaling
    assert not os.path.exists(box.path), "a successor must not replay a journal with holes"


def test_inbox_works_without_splice_for_a_stdin_that_is_a_file(tmp_path):
    box = Inbox(str(tmp_path), 1 << 20)
    stdin = tmp_path / "input"
    stdin.write_bytes(b"one\ntwo\n")
    fd = os.open(stdin, os.O_RDONLY)
    try:
        assert box.feed(box.take(fd, 1 << 20)) == [(0, b"one"), (4, b"two")]
    finally:
        os.close(fd)
    box.answered(0)
    box.sync_marks()
    assert Inbox(str(tmp_path), 1 << 20).unanswered == [(4, b"two")]


@pytest.mark.timeout(60)
def test_front_killed_with_requests_in_flight(node_factory, data_dir, tmp_path):
    node = node_factory(f"--data-dir={data_dir}")
    node.init()
    acked = [f"set a{i}={i}" for i in range(5)]
    for p in acked:
        node.call_ok({"type": "wal_append", "payload": p})
    pids = node.pids()
    [inbox_path] = glob.glob(os.path.join(tmp_path, "walnode-run-*", "front.inbox"))
    os.kill(pids["writer"], signal.SIGSTOP)  # requests stay in flight at the front
    try:
        appends = {
            node.send({"type": "wal_append", "payload": f"set b{i}={i}"}): i for i in range(40)
        }
        reads = [node.send({"type": "wal_read", "offset": i}) for i in range(5)]
        node.send_raw(
            '{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "payload": "x"}}\n'
        )
        node.send_raw("not json\n")
        status = node.send({"type": "status"})
        assert wait_until(lambda: node.stderr_text().count("not JSON") == 1, 5)
        assert node.reply_to(status)["body"]["type"] == "status_ok"
        size = os.path.getsize(inbox_path)
        os.kill(pids["front"], signal.SIGKILL)
    finally:
        os.kill(pids["writer"], signal.SIGCONT)
    assert size > 40 * 60, "the inbox holds the lines the front read"
    assert wait_until(lambda: node.restarted("front", pids["front"]), 10)

    replies = {msg_id: node.reply_to(msg_id)["body"] for msg_id in [*appends, *reads]}
    for msg_id in reads:
        got = replies[msg_id]
        assert got["type"] == "wal_read_ok" and got["payload"] == acked[got["offset"]], got
    for msg_id in appends:
        assert replies[msg_id]["type"] == "error" and replies[msg_id]["code"] == 13
        assert "front process restarted" in replies[msg_id]["text"]
    scan = node.call_ok({"type": "wal_scan", "from_offset": 0, "max_entries": 100})
    payloads = [e["payload"] for e in scan["entries"]]
    assert payloads[:5] == acked
    # What the stopped writer had queued from the dead front may have been
    # written (hence 13): in order, each at most once.
    later = [p for p in payloads[5:] if p != "x"]
    assert later == [f"set b{i}={i}" for i in range(len(later))]
    assert node.close() == 0
    out = [msg["body"] for msg in node.remaining()]
    assert out == [], f"replies nobody asked for, or a second reply: {out}"
    ids = [json.loads(line)["body"]["msg_id"] for line in node.raw]
    assert len(ids) == len(set(ids)), "a reply msg_id repeated across the front restart"


def test_an_overlong_line_is_handed_over_once_and_skipped_as_it_streams(tmp_path):
    box = Inbox(str(tmp_path), 4096)
    head = b'{"body": {"msg_id": 7, "payload": "'
    got = feed(box, b"ok\n" + head + b"x" * 5000)
    assert got[0] == (0, b"ok")
    [(start, line)] = got[1:]
    assert start == 3 and isinstance(line, OverlongLine) and line.startswith(head)
    assert len(box._partial) == 0, "an over-long line is not held"
    assert feed(box, b"y" * 60_000) == []  # the rest of it is skipped
    assert feed(box, b'"}}\nnext\n') == [(3 + len(head) + 65_004, b"next")]


def test_a_restarted_front_skips_the_rest_of_an_overlong_line(tmp_path, monkeypatch):
    monkeypatch.setattr(inbox_module, "COMPACT_BYTES", 64)
    box = Inbox(str(tmp_path), 4096)
    [(start, _)] = feed(box, b"x" * 10_000)
    box.answered(start)  # refused with its 12
    box.sync_marks()
    box.tidy()  # drops what was read of it
    assert os.path.getsize(box.path) < 100
    again = Inbox(str(tmp_path), 4096)  # as a restarted front finds it
    assert again.unanswered == []
    assert feed(again, b"y" * 50 + b"\nnext\n") == [(10_051, b"next")]


def test_an_open_line_costs_no_rewrites(tmp_path, monkeypatch):
    """A request left open (a kv_get behind a stalled compactor) must not make
    every pass rewrite the inbox: a rewrite copies no more than it drops."""
    monkeypatch.setattr(inbox_module, "COMPACT_BYTES", 1024)
    box = Inbox(str(tmp_path), 4096)
    [(held, _)] = feed(box, b"kv_get\n")
    rewrites = 0
    for i in range(200):
        for start, _ in feed(box, b"append %04d\n" % i * 10):
            box.answered(start)
        box.sync_marks()
        inode = os.stat(box.path).st_ino
        box.tidy()
        rewrites += os.stat(box.path).st_ino != inode
    assert rewrites == 0
    box.answered(held)
    box.tidy()
    assert os.path.getsize(box.path) < 100, "once answered, everything is dropped"
