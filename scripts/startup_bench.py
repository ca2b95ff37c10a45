"""Start-up at N entries (default 10M): the writer's and the compactor's.

Builds a data directory of N entries through the wal library (once, kept
under --dir; `set k<i>=<i>` payloads, 64 MiB segments, as
walctl.bench.recovery builds them), starts the real node on it, waits until
every process is ready, then:

- writer: kill -9 the writer, time until a `wal_append` is answered
  `wal_append_ok` again (median of --kills);
- compactor: kill -9 the compactor, time until `status` shows a new
  compactor `ready` (it has loaded its newest snapshot and replayed the log
  after it; median of --kills);
- node: the first start, spawn to every process ready.

    .venv/bin/python scripts/startup_bench.py --entries 10M --kills 3
    .venv/bin/python scripts/startup_bench.py --node-arg=--no-auto-compact

One JSON line of results.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wal.log import DEFAULT_MAX_SEGMENT_BYTES
from walctl.bench.recovery import SLOW, append_until_ok, build, parse_size
from walnode import Client


def wait_ready(node: Client, role: str, old_pid: int | None, timeout: float) -> int:
    """Poll status until `role` is ready under a pid other than `old_pid`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = node.status().process(role)
        if proc.state == "ready" and proc.pid != old_pid:
            return proc.pid
        time.sleep(0.005)
    raise AssertionError(f"the {role} was not ready again within {timeout} s")


def measure(path: str, kills: int, node_args: list[str]) -> dict:
    t0 = time.monotonic()
    args = ["--unavailable-wait", str(SLOW), *node_args]
    node = Client.spawn(data_dir=path, args=args, timeout=SLOW)
    try:
        while not all(p.state == "ready" for p in node.status().processes):
            time.sleep(0.01)
        out: dict = {"node_start_ms": round((time.monotonic() - t0) * 1000, 1)}
        writer, compactor = [], []
        for _ in range(kills):
            pid = node.status().process("writer").pid
            t = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            append_until_ok(node, SLOW)
            writer.append((time.monotonic() - t) * 1000)
            wait_ready(node, "compactor", None, SLOW)  # it reconnects to the new writer
        for _ in range(kills):
            pid = node.status().process("compactor").pid
            t = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            wait_ready(node, "compactor", pid, SLOW)
            compactor.append((time.monotonic() - t) * 1000)
        out["writer_kill_to_append_ms"] = round(statistics.median(writer), 1)
        out["writer_all_ms"] = [round(x, 1) for x in writer]
        out["compactor_kill_to_ready_ms"] = round(statistics.median(compactor), 1)
        out["compactor_all_ms"] = [round(x, 1) for x in compactor]
        t = time.monotonic()
        node.close(timeout=SLOW)
        out["graceful_stop_ms"] = round((time.monotonic() - t) * 1000, 1)
        return out
    finally:
        node.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", default="10M")
    p.add_argument("--dir", default="/tmp/walnode-startup")
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--node-arg", action="append", default=[], help="passed to node.py")
    args = p.parse_args(argv)
    n = parse_size(args.entries)
    path = os.path.join(args.dir, f"{n}-{DEFAULT_MAX_SEGMENT_BYTES}")
    t0 = time.monotonic()
    build(path, n, DEFAULT_MAX_SEGMENT_BYTES)
    built_s = round(time.monotonic() - t0, 1)
    result = measure(path, args.kills, args.node_arg)
    print(json.dumps({"entries": n, "build_s": built_s, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
