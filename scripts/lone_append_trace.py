"""Where a lone append's time goes: one append at a time through a real
walnode, each step timestamped in every process, the p50 of each step.

    .venv/bin/python scripts/lone_append_trace.py [--appends 2000] [--node PATH]

The node is started with scripts/trace_hooks on PYTHONPATH: its
sitecustomize wraps the calls a request passes through (zmq poll, send
and recv; os.write, splice, pread, lseek, fdatasync; the data directory's
identity check) in every walnode process, and each process writes its
events at exit. time.perf_counter_ns is CLOCK_MONOTONIC, shared by all
processes, so the events of one append lie on one time line between the
client's write of its line and the client's read of its reply. Each
wrapper costs about a microsecond, so the traced total is a little
above the untraced p50 the script also measures (a second node, no hooks).

Output: per step its p50 and p90 in µs over the appends, the sum of the
p50s, and what else ran inside an append's window (polls, notices, the
compactor's and supervisor's wake-ups), per append. With --floors, first
the parts alone in the same run: the pipe round trip to a node without a
disk, a ZeroMQ and a plain Unix socket echo round trip, and the fdatasync
of one record (appending, and into preallocated zeros).
"""

from __future__ import annotations

import argparse
import bisect
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from walctl.bench.reads import zmq_round_trips
from walnode import LeanPipes

HOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trace_hooks")
PAYLOAD = "v" * 100
LINE = '{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": %d, "payload": "%s"}}'


@dataclass(frozen=True)
class Milestone:
    """A step's end: the first event of `role` after the previous milestone
    whose label starts with `label` (and, for a poll, saw `woke`)."""

    name: str
    role: str
    label: str
    woke: str | None = None  # a poll's return: "0" stdin, "z" a zmq socket
    # a call that overlaps the next step (a zmq send: the peer may wake before it
    # returns): timed from the milestone before it, and the next step is too
    aside: bool = False

    def matches(self, role: str, label: str) -> bool:
        if role != self.role or not label.startswith(self.label):
            return False
        if self.woke is None:
            return True
        fds = label.partition(":")[2].split(",")
        return self.woke in fds


# The path of a lone append under --fsync always, each step named by what ends it.
PATH = [
    Milestone("client write(2) of the line", "client", "c.write<"),
    Milestone("front wakes for stdin (poll returns)", "front", "poll<", "0"),
    Milestone("front splice(2) stdin into the inbox", "front", "splice<"),
    Milestone("front pread(2) the line back", "front", "pread<"),
    Milestone("front parse, check, forward (to zmq send)", "front", "send>:last"),
    Milestone("  of which the zmq send call", "front", "send<:last", aside=True),
    Milestone("zmq front -> writer (send call, 2 I/O threads, wake)", "writer", "poll<", "z"),
    Milestone("writer recv", "writer", "recv<"),
    Milestone("writer unpack, stage, flush to write(2)", "writer", "write>"),
    Milestone("writer write(2) of the record", "writer", "write<"),
    Milestone("writer write -> fdatasync", "writer", "fdatasync>"),
    Milestone("writer fdatasync", "writer", "fdatasync<"),
    Milestone("writer data directory identity check", "writer", "DataDir.check_identity<"),
    Milestone("writer reply built (to zmq send)", "writer", "send>:more"),
    Milestone("  of which the zmq send call", "writer", "send<:last", aside=True),
    Milestone("zmq writer -> front (send call, 2 I/O threads, wake)", "front", "poll<", "z"),
    Milestone("front recv", "front", "recv<"),
    Milestone("front reply formatted, marks (to write(2))", "front", "write>:1"),
    # the client may read the reply before the front's write(2) returns
    Milestone("front write(2); client wakes, reads the reply", "client", "c.read<"),
]


def run_node(
    appends: int, node: str | None, trace_dir: str | None, command: list[str] | None = None
) -> list[tuple[int, int]]:
    """Drive `appends` lone appends; the client's (write start, read end) per append.
    `command`: the interpreter's arguments instead of node.py's path."""
    env = {}
    if trace_dir is not None:
        env = {"PYTHONPATH": HOOKS, "WALNODE_TRACE_DIR": trace_dir}
    if command is not None:
        command = [sys.executable, *command]
    elif node is not None:
        command = [sys.executable, node]
    data = tempfile.mkdtemp(prefix="lone-append-")
    pipes = LeanPipes.spawn(data, [], command=command, env=env)
    pipes.call({"type": "init", "node_id": "n1", "node_ids": ["n1"]}, 1)
    windows = []
    for i in range(appends):
        line = (LINE % (i + 10, PAYLOAD) + "\n").encode()
        start = time.perf_counter_ns()
        os.write(pipes.wfd, line)
        got = b""
        while not got.endswith(b"\n"):
            select.select([pipes.rfd], [], [], 1)
            try:
                got += os.read(pipes.rfd, 65536)
            except BlockingIOError:
                pass
        windows.append((start, time.perf_counter_ns()))
    pipes.close(60)
    return windows[appends // 10 :]  # the first tenth warms up


def load_events(trace_dir: str, windows: list[tuple[int, int]]) -> list[tuple[int, str, str]]:
    events = []
    for name in os.listdir(trace_dir):
        role = name.split("-")[0]
        with open(os.path.join(trace_dir, name)) as f:
            for row in f:
                t, label = row.rstrip("\n").split("\t")
                events.append((int(t), role, label))
    for start, end in windows:
        events += [(start, "client", "c.write>"), (start + 1, "client", "c.write<")]
        events.append((end, "client", "c.read<"))
    events.sort()
    return events


def steps_of(window: list[tuple[int, str, str]]) -> list[int] | None:
    """Each step's ns in one append's window, or None if a milestone is missing."""
    steps = []
    at, since = 0, window[0][0]  # the last milestone not aside: where the next search starts
    for milestone in PATH:
        i = at
        while i < len(window) and not milestone.matches(window[i][1], window[i][2]):
            i += 1
        if i == len(window):
            return None
        steps.append(window[i][0] - since)
        if not milestone.aside:
            at, since = i, window[i][0]
    return steps


def analyse(events: list[tuple[int, str, str]], windows: list[tuple[int, int]]) -> None:
    stamps = [e[0] for e in events]
    per_step: list[list[int]] = [[] for _ in PATH]
    totals, missing = [], 0
    extra: dict[str, int] = defaultdict(int)
    for start, end in windows:
        window = events[bisect.bisect_left(stamps, start) : bisect.bisect_right(stamps, end)]
        steps = steps_of(window)
        if steps is None:
            missing += 1
            continue
        totals.append(end - start)
        for k, ns in enumerate(steps):
            per_step[k].append(ns)
        for _, role, label in window:
            if ">" in label and role != "client":
                extra[f"{role} {label.partition(':')[0].rstrip('>')}"] += 1
    n = len(totals)
    print(f"{n} appends traced ({missing} without every step)")
    if not n:
        return
    print(f"{'step':52} {'p50 µs':>8} {'p90 µs':>8}")
    for milestone, values in zip(PATH, per_step, strict=True):
        values.sort()
        print(f"{milestone.name:52} {values[n // 2] / 1e3:8.1f} {values[int(n * 0.9)] / 1e3:8.1f}")
    p50s = sum(sorted(v)[n // 2] for v, m in zip(per_step, PATH, strict=True) if not m.aside) / 1e3
    print(f"{'sum of the step p50s (not the indented ones)':52} {p50s:8.1f}")
    print(
        f"{'append p50 (client write to client read), traced':52} "
        f"{statistics.median(totals) / 1e3:8.1f}"
    )
    print("calls per append inside the window:")
    for key in sorted(extra):
        print(f"  {key:40} {extra[key] / n:6.2f}")


def unix_round_trips(count: int) -> list[float]:
    """A plain Unix stream socket round trip to an echo child, one at a time (s)."""
    parent, child = socket.socketpair()
    echo = subprocess.Popen(
        [sys.executable, "-c", UNIX_ECHO, str(child.fileno())], pass_fds=[child.fileno()]
    )
    child.close()
    times = []
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            parent.sendall(b"x" * 100)
            got = 0
            while got < 100:
                got += len(parent.recv(4096))
            times.append(time.perf_counter() - t0)
    finally:
        parent.close()
        echo.wait()
    return times[count // 10 :]


UNIX_ECHO = """
import socket, sys
s = socket.socket(fileno=int(sys.argv[1]))
while data := s.recv(4096):
    s.sendall(data)
"""


def fdatasync_p50(count: int, preallocated: bool) -> float:
    """p50 (s) of one 108-byte record written and fdatasynced: appending to the
    file as the benchmark's raw loop does, or into zeros written (and fsynced)
    ahead, as walnode's preallocated segments are."""
    directory = tempfile.mkdtemp(prefix="lone-append-raw-")
    fd = os.open(os.path.join(directory, "raw.log"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if preallocated:
            os.write(fd, bytes(count * 108 + 4096))
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            os.write(fd, b"r" * 108)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        shutil.rmtree(directory, ignore_errors=True)
    return statistics.median(times[count // 10 :])


def print_floors(count: int) -> None:
    """What the path is made of, measured in the same run: the client's pipe to
    a node that answers without a disk, a ZeroMQ and a plain Unix socket round
    trip between two Python processes, and the fdatasync of one record."""
    null = run_node(count, None, None, ["-m", "walctl.bench.nullnode"])
    null_s = statistics.median(e - s for s, e in null) / 1e9
    rows = [
        ("pipe round trip to a node without a disk", null_s),
        ("ZeroMQ DEALER/ROUTER ipc echo round trip", statistics.median(zmq_round_trips(1.0))),
        ("plain Unix socket echo round trip", statistics.median(unix_round_trips(count))),
        ("write+fdatasync, appending (the raw loop)", fdatasync_p50(count, preallocated=False)),
        ("write+fdatasync into preallocated zeros", fdatasync_p50(count, preallocated=True)),
    ]
    for name, seconds in rows:
        print(f"{name:52} {seconds * 1e6:8.1f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--appends", type=int, default=2000)
    p.add_argument("--node", default=None, help="node.py to run (default: this checkout's)")
    p.add_argument("--floors", action="store_true", help="also measure the path's parts alone")
    args = p.parse_args()
    if args.floors:
        print_floors(args.appends)
    plain = run_node(args.appends, args.node, None)
    print(f"untraced append p50: {statistics.median(e - s for s, e in plain) / 1e3:.1f} µs")
    trace_dir = tempfile.mkdtemp(prefix="lone-append-trace-")
    windows = run_node(args.appends, args.node, trace_dir)
    analyse(load_events(trace_dir, windows), windows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
