"""Replies on stdout: written whole, never lost behind a slow reader, and
input lines bounded (actors/output.py, actors/inbox.py).

Each test drives a real walnode (node.py) over pipes and reads its raw
stdout bytes, so a cut or glued line fails it."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from collections import Counter

import pytest

from tests.nodeproc import NODE, REPO, StdoutReader, request_line, wait_until


def spawn(tmp_path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, NODE, f"--data-dir={tmp_path / 'data'}", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stderr", "wb"),  # noqa: SIM115 (closed with the process)
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )


def reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()  # the supervisor; its children die with it (PDEATHSIG)
    proc.wait(10)


def reply_to(reader: StdoutReader, msg_id: int, timeout: float = 10) -> dict:
    found: list[dict] = []

    def seen() -> bool:
        for line in reader.lines()[:-1]:
            msg = json.loads(line)
            if msg["body"].get("in_reply_to") == msg_id:
                found.append(msg["body"])
                return True
        return False

    assert wait_until(seen, timeout), f"no reply to {msg_id}"
    return found[0]


def start_front_pid(proc: subprocess.Popen, reader: StdoutReader) -> int:
    proc.stdin.write(request_line({"type": "init", "msg_id": 1, "node_id": "n1"}, src="c0"))
    proc.stdin.write(request_line({"type": "status", "msg_id": 2}))
    proc.stdin.flush()
    assert reply_to(reader, 1)["type"] == "init_ok"
    status = reply_to(reader, 2)
    return next(p["pid"] for p in status["processes"] if p["role"] == "front")


@pytest.mark.timeout(120)
def test_front_killed_behind_a_slow_reader_loses_at_most_one_write(tmp_path):
    """20,000 appends, a client reading 4 KiB at a time with a pause, and
    kill -9 of the front mid-stream: no cut line, no reply twice, and at
    most the one write in doubt (<= PIPE_BUF bytes of replies) unanswered."""
    proc = spawn(tmp_path)
    try:
        reader = StdoutReader(proc.stdout, chunk=4096, pause=0.003)
        front = start_front_pid(proc, reader)
        ids = list(range(10, 20_010))
        lines = b"".join(
            request_line({"type": "wal_append", "msg_id": i, "payload": f"set k{i}={i}"})
            for i in ids
        )
        feeder = threading.Thread(target=proc.stdin.write, args=(lines,), daemon=True)
        feeder.start()
        assert wait_until(lambda: reader.data.count(b"wal_append_ok") >= 2000, 30)
        os.kill(front, signal.SIGKILL)
        feeder.join(60)
        proc.stdin.close()
        assert proc.wait(60) == 0, (tmp_path / "stderr").read_text()
        reader.join(30)
    finally:
        reap(proc)
    replies = reader.replies()  # every line whole JSON
    answers = Counter(r["body"]["in_reply_to"] for r in replies)
    twice = [i for i, n in answers.items() if n > 1]
    assert not twice, f"replies repeated: {twice[:10]}"
    codes = Counter(r["body"].get("code") for r in replies if r["body"]["type"] == "error")
    assert set(codes) <= {13}, codes
    assert codes[13] > 0, "the kill left no reply to the successor: the test did not bite"
    unanswered = [i for i in ids if i not in answers]
    shortest = min(len(json.dumps(r)) + 1 for r in replies)
    assert len(unanswered) <= select.PIPE_BUF // shortest, (
        f"{len(unanswered)} appends unanswered, more than one write of at most "
        f"{select.PIPE_BUF} bytes holds"
    )
