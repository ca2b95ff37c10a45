"""Drive a real walnode process tree over its stdin and stdout."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = os.path.join(REPO, "node.py")
WALCTL = os.path.join(REPO, "walctl.py")


def walctl(*args: str) -> subprocess.CompletedProcess:
    """Run the operator tool and capture what it prints."""
    return subprocess.run(
        [sys.executable, WALCTL, *args], capture_output=True, text=True, timeout=60
    )


class Node:
    """One `python node.py ...` with pipes; reaped by the `node` fixture."""

    def __init__(self, *args: str, env: dict | None = None, preexec_fn=None) -> None:  # noqa: ANN001
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, NODE, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            preexec_fn=preexec_fn,  # e.g. resource limits for the whole tree
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.raw: list[str] = []  # every stdout line, in order
        self.stderr: list[str] = []
        self.next_msg_id = 1000
        self.unclaimed: list[dict] = []
        self._threads = [
            threading.Thread(target=self._pump_stdout, daemon=True),
            threading.Thread(target=self._pump_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump_stdout(self) -> None:
        for line in self.proc.stdout:
            text = line.decode()
            self.raw.append(text)
            self.lines.put(text)
        self.lines.put(None)

    def _pump_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line.decode())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_text(self) -> str:
        return "".join(self.stderr)

    # -- sending -----------------------------------------------------------

    def send_raw(self, data: str | bytes) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

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

    def init(self, node_id: str = "n1") -> dict:
        return self.call_ok({"type": "init", "node_id": node_id, "node_ids": [node_id]}, src="c0")

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
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc

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
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL to the supervisor's pid; children die with it
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass


def pid_alive(pid: int) -> bool:
    """True if `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_until(pred, timeout: float = 5, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()
