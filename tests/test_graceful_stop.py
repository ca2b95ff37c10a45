"""SIGTERM, SIGINT and SIGHUP stop walnode gracefully: the front reads no
more input and answers every request it read (appends after their fsync),
then the compactor and the writer stop, exit 0. A second signal or
--stop-timeout stops at once: what the writer held gets error 13, exit 1.

Each test spawns node.py, feeds it appends and counts the wal_append_ok
replies on its raw stdout against the log's next_offset afterwards (the
wal library, read-only): every durable append was answered."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from tests.nodeproc import NODE, REPO, StdoutReader, request_line, wait_until
from wal import Log

INIT = request_line({"type": "init", "msg_id": 1, "node_id": "n1"}, src="c0")


def append(i: int) -> bytes:
    return request_line({"type": "wal_append", "msg_id": i, "payload": f"set k{i}={i}"})


def spawn(tmp_path, stdin, *args: str, group: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, NODE, f"--data-dir={tmp_path / 'data'}", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stderr", "ab"),  # noqa: SIM115 (closed with the process)
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        start_new_session=group,  # its own process group, as a terminal gives it
    )


def finish(proc: subprocess.Popen, reader: StdoutReader) -> int:
    try:
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()  # the supervisor; its children die with it (PDEATHSIG)
            proc.wait(10)
    reader.join(10)
    return code


def next_offset(tmp_path) -> int:
    log, _ = Log.open(os.fspath(tmp_path / "data" / "wal"), readonly=True)
    try:
        return log.next_offset
    finally:
        log.close()


def check_every_durable_append_answered(reader: StdoutReader, tmp_path) -> int:
    replies = reader.replies()  # no malformed or cut line
    types = Counter(r["body"]["type"] for r in replies)
    answers = Counter(r["body"]["in_reply_to"] for r in replies)
    assert max(answers.values()) == 1, "a request answered twice"
    assert types["error"] == 0, [r for r in replies if r["body"]["type"] == "error"][:3]
    acked = types["wal_append_ok"]
    assert acked == next_offset(tmp_path), (acked, next_offset(tmp_path))
    return acked


def stream(proc: subprocess.Popen, first: int) -> threading.Thread:
    """A client writing appends until walnode stops reading (its pipe breaks)."""

    def run() -> None:
        i = first
        try:
            while True:
                proc.stdin.write(b"".join(append(j) for j in range(i, i + 500)))
                i += 500
        except (BrokenPipeError, ValueError, OSError):
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(120)
def test_sigterm_with_300000_appends_from_a_file(tmp_path):
    requests = tmp_path / "requests.jsonl"
    with open(requests, "wb") as f:
        f.write(INIT)
        for start in range(10, 300_010, 10_000):
            f.write(b"".join(append(i) for i in range(start, start + 10_000)))
    with open(requests, "rb") as stdin:
        proc = spawn(tmp_path, stdin)
    reader = StdoutReader(proc.stdout)
    assert wait_until(lambda: reader.data.count(b"wal_append_ok") >= 5000, 60)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc, reader) == 0, (tmp_path / "stderr").read_text()[-3000:]
    acked = check_every_durable_append_answered(reader, tmp_path)
    assert 5000 <= acked < 300_000, "the stop came mid-stream"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_with_a_streaming_client(tmp_path, sig):
    proc = spawn(tmp_path, subprocess.PIPE)
    proc.stdin.write(INIT)
    reader = StdoutReader(proc.stdout)
    client = stream(proc, 10)
    assert wait_until(lambda: reader.data.count(b"wal_append_ok") >= 3000, 60)
    proc.send_signal(sig)
    assert finish(proc, reader) == 0, (tmp_path / "stderr").read_text()[-3000:]
    client.join(10)
    check_every_durable_append_answered(reader, tmp_path)


@pytest.mark.timeout(120)
def test_sigterm_to_the_process_group(tmp_path):
    """As a terminal or `kill -TERM -PGID` does: every process gets it; the
    children leave it to the supervisor, which stops them in order."""
    proc = spawn(tmp_path, subprocess.PIPE, group=True)
    proc.stdin.write(INIT)
    reader = StdoutReader(proc.stdout)
    client = stream(proc, 10)
    assert wait_until(lambda: reader.data.count(b"wal_append_ok") >= 3000, 60)
    os.killpg(proc.pid, signal.SIGTERM)
    assert finish(proc, reader) == 0, (tmp_path / "stderr").read_text()[-3000:]
    client.join(10)
    check_every_durable_append_answered(reader, tmp_path)


def status(reader: StdoutReader, proc: subprocess.Popen, msg_id: int) -> dict:
    """Ask for status; its reply also says the front read every line before it."""
    proc.stdin.write(request_line({"type": "status", "msg_id": msg_id}))
    proc.stdin.flush()
    found: list[dict] = []

    def answered() -> bool:
        *whole, _ = reader.lines()
        found.extend(r for r in map(json.loads, whole) if r["body"]["in_reply_to"] == msg_id)
        return bool(found)

    assert wait_until(answered, 10)
    return found[0]["body"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["second signal", "stop timeout"])
def test_a_second_signal_or_the_deadline_stops_at_once(tmp_path, how):
    """The writer is stopped (SIGSTOP) holding five appends: the graceful
    stop cannot finish; a second signal, or --stop-timeout, answers them 13
    and exits 1."""
    proc = spawn(
        tmp_path, subprocess.PIPE, "--stop-timeout", "1" if how == "stop timeout" else "60"
    )
    proc.stdin.write(INIT)
    reader = StdoutReader(proc.stdout)
    writer = next(p["pid"] for p in status(reader, proc, 2)["processes"] if p["role"] == "writer")
    os.kill(writer, signal.SIGSTOP)
    try:
        proc.stdin.write(b"".join(append(i) for i in range(10, 15)))
        status(reader, proc, 3)  # the appends are read and at the stopped writer
        proc.send_signal(signal.SIGTERM)
        if how == "second signal":
            # a signal sent while the first is still pending merges with it (POSIX)
            stderr = tmp_path / "stderr"
            assert wait_until(lambda: "stopping: answering" in stderr.read_text(), 10)
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
        assert finish(proc, reader) == 1, (tmp_path / "stderr").read_text()[-3000:]
    finally:
        try:
            os.kill(writer, signal.SIGCONT)
        except ProcessLookupError:
            pass
    errors = {
        r["body"]["in_reply_to"]: r["body"]
        for r in reader.replies()
        if r["body"]["type"] == "error"
    }
    assert sorted(errors) == list(range(10, 15))
    for body in errors.values():
        assert body["code"] == 13 and "stopped at once" in body["text"], body


@pytest.mark.timeout(60)
@pytest.mark.parametrize("lines_read", [0, 3])
def test_a_reader_that_closes_stdout_stops_walnode_in_order(tmp_path, lines_read):
    """`walnode < requests | head -n 3`: the front's next write meets EPIPE.
    That is not a crash: one log line, no restart, no traceback; the writer
    stops in order and walnode exits 0 (README, Stopping). Every append the
    reader saw acknowledged is in the log."""
    requests = tmp_path / "requests.jsonl"
    with open(requests, "wb") as f:
        f.write(INIT)
        f.write(b"".join(append(i) for i in range(10, 50_010)))
    with open(requests, "rb") as stdin:
        proc = spawn(tmp_path, stdin)
    try:
        seen = [json.loads(proc.stdout.readline()) for _ in range(lines_read)]
        proc.stdout.close()  # the reader goes away
        closed_at = time.monotonic()
        code = proc.wait(30)
        took = time.monotonic() - closed_at
    finally:
        if proc.poll() is None:
            proc.kill()  # the supervisor; its children die with it (PDEATHSIG)
            proc.wait(10)
    stderr = (tmp_path / "stderr").read_text()
    assert code == 0, stderr[-3000:]
    assert took < 10, f"walnode took {took:.1f} s to stop after its reader went away"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(re.findall(r"reader of stdout closed it", stderr)) == 1, stderr[-3000:]
    assert stderr.count("started front") == 1, "the front was restarted"
    acked = [r["body"]["offset"] for r in seen if r["body"]["type"] == "wal_append_ok"]
    assert len(acked) == max(0, lines_read - 1)  # the first reply is init_ok
    log, _ = Log.open(os.fspath(tmp_path / "data" / "wal"), readonly=True)
    try:
        assert log.next_offset >= len(acked)
        assert all(offset < log.next_offset for offset in acked), (acked, log.next_offset)
        for offset in range(log.next_offset):  # appends are applied in input order
            entry = log.read(offset)
            expected = f"set k{offset + 10}={offset + 10}".encode()
            assert entry.checksum_valid and entry.payload == expected, entry
    finally:
        log.close()
