"""Drive a real walnode process tree over its stdin and stdout."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

from actors.procfs import pid_alive
from walnode import Client

__all__ = ["NODE", "REPO", "WALCTL", "Node", "pid_alive", "wait_until", "walctl"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = os.path.join(REPO, "node.py")
WALCTL = [sys.executable, "-m", "walctl"]  # the installed walctl package, as `walctl` runs it
# Seconds init waits for its reply: supervisor, writer, compactor and front
# start (four interpreters) first, and on a loaded 2-core box that took up
# to 10 s and more, so a 10 s wait failed tests that were right.
START_TIMEOUT = 30.0
WALCTL_STOP_WAIT = 20.0  # seconds a walctl told to stop has to stop what it started


def walctl(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the operator tool and capture what it prints. If it outlives
    `timeout`, or the test's own timeout interrupts the wait, it gets SIGTERM
    first, so it stops and reaps what it started (a campaign's replicas run in
    sessions of their own, which a SIGKILL of walctl would orphan), and
    SIGKILL only if it does not end within WALCTL_STOP_WAIT."""
    proc = subprocess.Popen(
        [*WALCTL, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.terminate()
        try:
            proc.communicate(timeout=WALCTL_STOP_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class Node:
    """One `python node.py ...` (a walnode.Client that sends nothing of its
    own) whose every stdout line is queued in order for the test to read;
    reaped by the `node_factory` fixture."""

    def __init__(self, *args: str, env: dict | None = None, preexec_fn=None) -> None:  # noqa: ANN001
        self.args = args
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.raw: list[str] = []  # every stdout line, in order
        self.client = Client.spawn(
            args=args,
            init=False,
            cwd=REPO,
            env=env,
            preexec_fn=preexec_fn,  # e.g. resource limits for the whole tree
            on_unmatched=self._on_line,
            on_eof=lambda: self.lines.put(None),
        )
        self.proc = self.client.proc
        self.stderr: list[str] = self.client.stderr_lines
        self.next_msg_id = 1000
        self.unclaimed: list[dict] = []

    def _on_line(self, message: dict, raw: bytes, t: float) -> None:
        text = raw.decode() + "\n"
        self.raw.append(text)
        self.lines.put(text)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_text(self) -> str:
        return self.client.stderr_text()

    # -- sending -----------------------------------------------------------

    def send_raw(self, data: str | bytes) -> None:
        self.client.send_lines(data.encode() if isinstance(data, str) else data)

    def send(self, body: dict, src: str = "c1", dest: str = "n1") -> int | None:
        if "msg_id" not in body:
            body = {**body, "msg_id": self.next_msg_id}
            self.next_msg_id += 1
        self.send_raw(json.dumps({"src": src, "dest": dest, "body": body}) + "\n")
        return body.get("msg_id")

    # -- receiving ---------------------------------------------------------

    def recv(self, timeout: float = 10) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no reply within {timeout} s; stderr:\n{self.stderr_text()}"
            ) from None
        if line is None:
            self.lines.put(None)
            raise AssertionError(f"walnode closed stdout; stderr:\n{self.stderr_text()}")
        return json.loads(line)

    def reply_to(self, msg_id: int, timeout: float = 10) -> dict:
        """The reply to `msg_id`; other replies read meanwhile are kept."""
        for i, msg in enumerate(self.unclaimed):
            if msg["body"].get("in_reply_to") == msg_id:
                return self.unclaimed.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg["body"].get("in_reply_to") == msg_id:
                return msg
            self.unclaimed.append(msg)

    def call(self, body: dict, timeout: float = 10, **kw: str) -> dict:
        """Send a request and return its reply's body."""
        return self.reply_to(self.send(body, **kw), timeout)["body"]

    def call_ok(self, body: dict, timeout: float = 10, **kw: str) -> dict:
        """Like call, and the reply must be the request's `_ok`."""
        reply = self.call(body, timeout, **kw)
        assert reply["type"] == body["type"] + "_ok", reply
        return reply

    def init(self, node_id: str = "n1", timeout: float = START_TIMEOUT) -> dict:
        """The first request: its reply waits for the whole tree to start."""
        body = {"type": "init", "node_id": node_id, "node_ids": [node_id]}
        return self.call_ok(body, timeout, src="c0")

    def status(self) -> dict:
        return self.call_ok({"type": "status"})

    def pids(self) -> dict[str, int]:
        return {p["role"]: p["pid"] for p in self.status()["processes"]}

    def process(self, role: str) -> dict:
        """One process's entry of one `status` reply."""
        return next(p for p in self.status()["processes"] if p["role"] == role)

    def restarted(self, role: str, old_pid: int) -> bool:
        """True once `role` runs again under a new pid and is ready to serve."""
        p = self.process(role)
        return p["pid"] not in (None, old_pid) and p["state"] == "ready"

    # -- ending ------------------------------------------------------------

    def close(self, timeout: float = 20) -> int:
        """Close stdin (EOF) and wait for a clean exit; returns the exit code."""
        return self.client.close(timeout)

    def remaining(self) -> list[dict]:
        """Every reply not yet consumed (after close)."""
        out = list(self.unclaimed)
        self.unclaimed = []
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self.lines.put(None)
                break
            out.append(json.loads(line))
        return out

    def kill(self) -> None:
        self.client.kill()  # SIGKILL to the supervisor's pid; children die with it


def wait_until(pred, timeout: float = 5, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def request_line(body: dict, src: str = "c1", dest: str = "n1") -> bytes:
    return (json.dumps({"src": src, "dest": dest, "body": body}) + "\n").encode()


class StdoutReader:
    """Reads a process's stdout in a thread, `chunk` bytes at a time with
    `pause` seconds between reads (a slow client), keeping every byte."""

    def __init__(self, stream, chunk: int = 1 << 16, pause: float = 0.0) -> None:
        self.fd = stream.fileno()
        self.chunk, self.pause = chunk, pause
        self.data = bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while block := os.read(self.fd, self.chunk):
            self.data += block
            if self.pause:
                time.sleep(self.pause)

    def lines(self) -> list[bytes]:
        return bytes(self.data).split(b"\n")

    def replies(self) -> list[dict]:
        """Every complete line parsed; a malformed line fails the caller's test."""
        *whole, rest = self.lines()
        assert rest == b"", f"stdout ends inside a line: {rest[:200]!r}"
        out = []
        for line in whole:
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"a malformed stdout line: {line[:300]!r}") from None
        return out

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "stdout did not close in time"
