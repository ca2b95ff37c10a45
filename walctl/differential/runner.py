"""Drive one node.py through a session and keep every byte it prints.

After each step's writes the runner waits at a barrier: a `wal_sync`
(answered by the writer after every request the front sent it before), then
a `kv_get` of a key no session sets (the compactor, in order) together with
a `status` (the supervisor, in order). Once the barrier's three replies are
out, every reply to the step's lines is out too, so a step's lines are
answered before the next step's are read: a session gives one stream of
replies, up to the order of the replies within a step, which PROTOCOL.md
leaves free."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from wal.fsutil import write_all
from walctl.differential import damage
from walctl.differential.session import Crash, Damage, KillRole, Restart, Session, Step

BARRIER_SRC = "barrier"
BARRIER_BASE = 900_000_000_000  # barrier msg_ids: far above any a session uses
DATA_DIR = "$DATA_DIR"  # stands for the run's data directory in error texts
_BARRIER_REPLY = re.compile(
    rb'"dest": "(?:barrier|poll)", "body": \{"type": "[a-z_]+", "in_reply_to": (\d+)'
)
CRASH_FIRST = "crash+"  # a Damage action so prefixed stops the node with kill -9
POLL_SRC = "poll"  # KillRole's status requests: their replies are taken out of the run
POLL_BASE = 950_000_000_000
_REPLY_MSG_ID = re.compile(r', "msg_id": (-?[0-9]+)\}\}$')


@dataclass
class RunResult:
    """One process's life: what it printed and how it ended."""

    exit_code: int | None  # None: killed by the runner (it hung)
    lines: list[str]  # complete stdout lines in order, without their newline
    partial: str = ""  # bytes after the last newline at its end: a cut line
    problem: str | None = None  # the runner's own finding: a barrier not answered

    def to_json(self) -> dict:
        return {"exit_code": self.exit_code, "lines": self.lines, "partial": self.partial}


@dataclass
class SessionResult:
    runs: list[RunResult] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what each Damage did


def read_lines(fd: int) -> Iterator[tuple[list[bytes], bytes]]:
    """Each read of `fd` until its end: the lines it completed (without their
    newlines), and the bytes after the last newline so far."""
    rest = b""
    while chunk := os.read(fd, 1 << 16):
        *complete, rest = (rest + chunk).split(b"\n")
        yield complete, rest


def spawn_node(node_py: str, data_dir: str, flags: Sequence[str], workdir: str) -> subprocess.Popen:
    """`python node.py --data-dir DIR FLAGS` with pipes, in a process group of its
    own, its stderr appended to workdir/stderr, TMPDIR (its run directory) workdir."""
    with open(os.path.join(workdir, "stderr"), "ab") as stderr:  # the child keeps its own
        return subprocess.Popen(
            [python_for(node_py), node_py, f"--data-dir={data_dir}", *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=os.path.dirname(os.path.abspath(node_py)),
            env={**os.environ, "TMPDIR": workdir},
            start_new_session=True,
        )


def python_for(node_py: str) -> str:
    """The interpreter of a checkout: its .venv's, else this one."""
    venv = os.path.join(os.path.dirname(os.path.abspath(node_py)), ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def barrier_lines(step_index: int) -> list[tuple[bytes, tuple[int, ...]]]:
    """The barrier after a step: lines written one group at a time, each group
    once the replies to the one before are out, and those replies' msg_ids."""
    base = BARRIER_BASE + 8 * step_index
    sync = b'{"src": "barrier", "dest": "n1", "body": {"type": "wal_sync", "msg_id": %d}}\n'
    kv_get = (
        b'{"src": "barrier", "dest": "n1", "body": {"type": "kv_get", "msg_id": %d, '
        b'"key": "barrier key"}}\n'
    )
    status = b'{"src": "barrier", "dest": "n1", "body": {"type": "status", "msg_id": %d}}\n'
    return [
        (sync % base, (base,)),  # the writer: after every request sent to it before
        ((kv_get % (base + 1)) + (status % (base + 2)), (base + 1, base + 2)),
        # a wal_compact the compactor was serving sent the writer its truncate before it
        # read the kv_get: one more round through the writer and the compactor
        (sync % (base + 3), (base + 3,)),
        (kv_get % (base + 4), (base + 4,)),
    ]


class NodeProcess:
    """One `python node.py --data-dir DIR FLAGS`, in a process group of its own,
    whose stdout a thread reads as it comes."""

    def __init__(self, node_py: str, data_dir: str, flags: tuple[str, ...], workdir: str) -> None:
        self.proc = spawn_node(node_py, data_dir, flags, workdir)
        self.data_dir = data_dir
        self.lines: list[str] = []
        self.partial = b""
        self.barriers: set[int] = set()
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for complete, rest in read_lines(self.proc.stdout.fileno()):
            with self.changed:
                for line in complete:
                    self.lines.append(line.decode("utf-8", "backslashreplace"))
                    if b'"barrier"' in line and (found := _BARRIER_REPLY.search(line)):
                        self.barriers.add(int(found.group(1)))
                self.partial = rest
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def write(self, data: bytes) -> None:
        """All of `data`, in as few write(2) calls as the pipe takes."""
        assert self.proc.stdin is not None
        write_all(self.proc.stdin.fileno(), data)

    def wait_barrier(self, msg_ids: tuple[int, ...], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not self.barriers.issuperset(msg_ids):
                left = deadline - time.monotonic()
                if left <= 0 or not self.reader.is_alive():
                    return False
                self.changed.wait(min(left, 0.5))
        return True

    def finish(self, timeout: float) -> RunResult:
        """Close stdin (end of input), wait for the exit; kill the group if it hangs."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        self.kill()
        self.reader.join(10)
        with self.changed:
            # the data directory's path is the one thing a reply may name that differs by run
            lines = [line.replace(self.data_dir, DATA_DIR) for line in self.lines]
            lines, problem = _without_polls(lines)
            return RunResult(code, lines, self.partial.decode("utf-8", "replace"), problem)

    def last_status_pids(self) -> dict[str, int]:
        """The pids in the newest status reply printed."""
        with self.changed:
            for line in reversed(self.lines):
                if '"type": "status_ok"' in line:
                    body = json.loads(line)["body"]
                    return {p["role"]: p["pid"] for p in body["processes"] if p.get("pid")}
        return {}

    def status(self, msg_id: int, timeout: float) -> dict | None:
        line = b'{"src": "poll", "dest": "n1", "body": {"type": "status", "msg_id": %d}}\n'
        self.write(line % msg_id)
        if not self.wait_barrier((msg_id,), timeout):
            return None
        with self.changed:
            for text in reversed(self.lines):
                if f'"in_reply_to": {msg_id},' in text and '"dest": "poll"' in text:
                    return json.loads(text)["body"]
        return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)


def _without_polls(lines: list[str]) -> tuple[list[str], str | None]:
    """The lines without KillRole's status replies, renumbered as if they had
    not been asked; a problem if the raw stream's reply msg_ids were not 0, 1, ..."""
    if not any('"dest": "poll"' in line for line in lines):
        return lines, None
    problem = None
    for i, line in enumerate(lines):
        found = _REPLY_MSG_ID.search(line)
        if found is None or int(found.group(1)) != i:
            problem = f"reply msg_ids not 0, 1, ... at line {i} ({line[:160]!r})"
            break
    kept = [line for line in lines if '"dest": "poll"' not in line]
    out = []
    for i, line in enumerate(kept):
        found = _REPLY_MSG_ID.search(line)
        out.append(line if found is None else f'{line[: found.start()]}, "msg_id": {i}}}}}')
    return out, problem


def _kill_role(node: NodeProcess, role: str, n: int, timeout: float) -> str | None:
    """kill -9 `role`, then poll status until every process is ready, `role` anew."""
    pid = node.last_status_pids().get(role)
    if pid is None:
        return f"no {role} pid in the last status reply"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    polls = 0
    while time.monotonic() < deadline:
        time.sleep(0.2)
        polls += 1
        body = node.status(POLL_BASE + 1000 * n + polls, timeout)
        if body is None:
            continue
        procs = {p["role"]: p for p in body.get("processes", [])}
        if procs.get(role, {}).get("pid") not in (None, pid) and all(
            p.get("state") == "ready" for p in procs.values()
        ):
            return None
    return f"{role} not back (every process ready) within {timeout} s of its kill"


def run_session(node_py: str, session: Session, workdir: str, timeout: float = 30) -> SessionResult:
    """Pipe `session` through a fresh walnode (data in workdir/data)."""
    os.makedirs(workdir, exist_ok=True)
    data_dir = os.path.join(workdir, "data")
    began = time.monotonic()
    result = SessionResult()
    node: NodeProcess | None = NodeProcess(node_py, data_dir, session.flags, workdir)
    try:
        for index, step in enumerate(session.steps):
            if isinstance(step, (Restart, Damage, Crash)):
                if node is not None:  # else it exited, its run recorded: start a new one
                    if isinstance(step, Crash) or (
                        isinstance(step, Damage) and step.action.startswith(CRASH_FIRST)
                    ):
                        node.kill()
                    result.runs.append(node.finish(timeout))
                if isinstance(step, Damage):
                    action = step.action.removeprefix(CRASH_FIRST)
                    note = damage.apply(action, data_dir, node_py, python_for(node_py))
                    result.notes.append(note)
                node = NodeProcess(node_py, data_dir, session.flags, workdir)
                continue
            if node is None:
                continue  # the node exited: the steps up to the next start have no node
            if isinstance(step, KillRole):
                problem = _kill_role(node, step.role, index, timeout)
            else:
                problem = _run_step(node, index, step, timeout)
            if problem is not None:
                try:
                    node.proc.wait(5)  # its stdout closed: it is exiting, or it hangs
                    exited = True
                except subprocess.TimeoutExpired:
                    exited = False
                run = node.finish(0.1)
                run.problem = problem
                result.runs.append(run)
                if not exited:
                    return result  # it hangs: the session cannot go on
                node = None  # it exited by itself (refused to start): go on at the next start
        if node is not None:
            result.runs.append(node.finish(timeout))
    finally:
        if node is not None:
            node.kill()
        result.seconds = time.monotonic() - began
    return result


def _run_step(node: NodeProcess, index: int, step: Step, timeout: float) -> str | None:
    """Write the step, then pass its barrier; what went wrong, if anything."""
    try:
        for i, data in enumerate(step.writes):
            if i and step.pause:
                time.sleep(step.pause)
            node.write(data)
        for lines, msg_ids in barrier_lines(index):
            node.write(lines)
            if not node.wait_barrier(msg_ids, timeout):
                return f"step {index}: no reply to barrier {msg_ids} within {timeout} s"
    except BrokenPipeError:
        return f"step {index}: the node closed its stdin"
    return None
