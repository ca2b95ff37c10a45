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
from walctl.differential.session import Restart, Session, Step

BARRIER_SRC = "barrier"
BARRIER_BASE = 900_000_000_000  # barrier msg_ids: far above any a session uses
DATA_DIR = "$DATA_DIR"  # stands for the run's data directory in error texts
_BARRIER_REPLY = re.compile(
    rb'"dest": "barrier", "body": \{"type": "[a-z_]+", "in_reply_to": (\d+)'
)


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
            return RunResult(code, lines, self.partial.decode("utf-8", "replace"))

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)


def run_session(node_py: str, session: Session, workdir: str, timeout: float = 30) -> SessionResult:
    """Pipe `session` through a fresh walnode (data in workdir/data)."""
    os.makedirs(workdir, exist_ok=True)
    data_dir = os.path.join(workdir, "data")
    began = time.monotonic()
    result = SessionResult()
    node = NodeProcess(node_py, data_dir, session.flags, workdir)
    try:
        for index, step in enumerate(session.steps):
            if isinstance(step, Restart):
                result.runs.append(node.finish(timeout))
                node = NodeProcess(node_py, data_dir, session.flags, workdir)
                continue
            problem = _run_step(node, index, step, timeout)
            if problem is not None:
                run = node.finish(0.1)
                run.problem = problem
                result.runs.append(run)
                return result
        result.runs.append(node.finish(timeout))
    finally:
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
