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
import time
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


def start(proc: subprocess.Popen, reader: StdoutReader) -> dict[str, int]:
    """init, then each process's pid (from status)."""
    proc.stdin.write(request_line({"type": "init", "msg_id": 1, "node_id": "n1"}, src="c0"))
    proc.stdin.write(request_line({"type": "status", "msg_id": 2}))
    proc.stdin.flush()
    assert reply_to(reader, 1)["type"] == "init_ok"
    return {p["role"]: p["pid"] for p in reply_to(reader, 2)["processes"]}


def proc_field(pid: int, name: str, field: str) -> int:
    """A number from /proc/PID/NAME (status: kB, io: bytes)."""
    with open(f"/proc/{pid}/{name}") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == field:
                return int(value.split()[0])
    raise KeyError(field)


@pytest.mark.timeout(120)
def test_front_killed_behind_a_slow_reader_loses_at_most_one_write(tmp_path):
    """20,000 appends, a client reading 4 KiB at a time with a pause, and
    kill -9 of the front mid-stream: no cut line, no reply twice, and at
    most the one write in doubt (<= PIPE_BUF bytes of replies) unanswered."""
    proc = spawn(tmp_path)
    try:
        reader = StdoutReader(proc.stdout, chunk=4096, pause=0.003)
        front = start(proc, reader)["front"]
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


@pytest.mark.timeout(120)
def test_a_64_mib_line_is_refused_as_it_streams_and_delays_no_one(tmp_path):
    """A 64 MiB line, an 8 MiB one whose msg_id comes only after its payload,
    then an append: the first gets error 12 with its msg_id, the second is
    logged and skipped, the append is answered within 5 s, and the front
    never holds either line (its peak RSS stays far below 64 MiB)."""
    proc = spawn(tmp_path)
    try:
        reader = StdoutReader(proc.stdout)
        front = start(proc, reader)["front"]
        big = (
            b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": 7, '
            b'"payload": "' + b"x" * (64 << 20) + b'"}}\n'
        )
        nameless = b'{"src": "c1", "body": {"payload": "' + b"y" * (8 << 20) + b'", "msg_id": 9}}\n'
        t0 = time.monotonic()
        proc.stdin.write(big + nameless)
        proc.stdin.write(request_line({"type": "wal_append", "msg_id": 8, "payload": "after"}))
        proc.stdin.flush()
        after = reply_to(reader, 8, timeout=60)
        took = time.monotonic() - t0
        assert after["type"] == "wal_append_ok" and after["offset"] == 0, after
        assert took < 5, f"the append behind a 64 MiB line took {took:.1f} s"
        refused = reply_to(reader, 7)
        assert refused["type"] == "error" and refused["code"] == 12, refused
        assert "--max-line-bytes" in refused["text"], refused
        peak_kib = proc_field(front, "status", "VmHWM")
        assert peak_kib < 48 << 10, f"the front's peak RSS is {peak_kib} KiB"
        proc.stdin.close()
        assert proc.wait(30) == 0
        reader.join(10)
    finally:
        reap(proc)
    assert 9 not in [r["body"].get("in_reply_to") for r in reader.replies()]
    assert "name no msg_id" in (tmp_path / "stderr").read_text()


# over-long lines whose head holds decoys: a msg_id nested deeper, a key that
# holds "msg_id" behind an escaped quote, a "src" inside another object;
# (line, msg_id the reply must answer, the reply's dest, msg_ids it must not)
PAD = "a" * 20_000  # over --max-line-bytes 4096 below
DECOY_LINES = [
    (
        '{"src":"c","dest":"n1","body":{"type":"wal_append","meta":{"msg_id":999},'
        f'"msg_id":7,"payload":"{PAD}"}}}}',
        7,
        "c",
        [999],
    ),
    (
        '{"src":"c","dest":"n1","body":{"type":"wal_append","a\\"msg_id":5,'
        f'"msg_id":11,"payload":"{PAD}"}}}}',
        11,
        "c",
        [5],
    ),
    (
        '{"x":{"src":"evil","dest":"evil"},"src":"c2","dest":"n1","body":{"type":"wal_append",'
        f'"msg_id":12,"payload":"{PAD}"}}}}',
        12,
        "c2",
        [],
    ),
]


@pytest.mark.timeout(60)
def test_an_over_long_line_is_answered_by_its_own_envelope_not_a_decoy(tmp_path):
    """An over-long line's src and msg_id are the envelope's (top-level src,
    the body's msg_id), read by a JSON scan of its head; the old regex took
    the first "msg_id" or "src" anywhere in it and answered 999, 5 and evil."""
    proc = spawn(tmp_path, "--max-line-bytes", "4096")
    try:
        reader = StdoutReader(proc.stdout)
        start(proc, reader)
        for line, _, _, _ in DECOY_LINES:
            assert json.loads(line)  # each is one valid JSON request
            proc.stdin.write(line.encode() + b"\n")
        proc.stdin.write(request_line({"type": "wal_append", "msg_id": 20, "payload": "after"}))
        proc.stdin.close()
        assert proc.wait(30) == 0
        reader.join(10)
    finally:
        reap(proc)
    replies = {r["body"].get("in_reply_to"): r for r in reader.replies()}
    for _, msg_id, dest, decoys in DECOY_LINES:
        reply = replies[msg_id]
        assert reply["dest"] == dest and reply["body"]["code"] == 12, reply
        assert "--max-line-bytes" in reply["body"]["text"], reply
        assert not set(decoys) & set(replies), (decoys, replies)
    assert replies[20]["body"]["type"] == "wal_append_ok"
    assert sorted(replies) == [1, 2, 7, 11, 12, 20]


@pytest.mark.timeout(120)
def test_a_kv_get_behind_a_stalled_compactor_costs_no_inbox_rewrites(tmp_path):
    """A kv_get stays open while the compactor is stopped; 60,000 appends
    (5 MiB of input, past the inbox's 4 MiB compaction size) pass it. The
    front writes O(what it reads and answers), not the inbox once per pass."""
    proc = spawn(tmp_path)
    pids: dict[str, int] = {}
    try:
        reader = StdoutReader(proc.stdout)
        pids = start(proc, reader)
        os.kill(pids["compactor"], signal.SIGSTOP)
        proc.stdin.write(request_line({"type": "kv_get", "msg_id": 3, "key": "k"}))
        lines = b"".join(
            request_line({"type": "wal_append", "msg_id": i, "payload": f"set k{i}={i}"})
            for i in range(10, 60_010)
        )
        written_before = proc_field(pids["front"], "io", "wchar")
        proc.stdin.write(lines)
        proc.stdin.flush()
        assert wait_until(lambda: reader.data.count(b"wal_append_ok") == 60_000, 60)
        written = proc_field(pids["front"], "io", "wchar") - written_before
    finally:
        if pids:
            os.kill(pids["compactor"], signal.SIGCONT)
        reap(proc)
    replies = len(reader.data)
    assert written < 3 * (len(lines) + replies), (
        f"the front wrote {written} bytes for {len(lines)} read and {replies} answered"
    )
