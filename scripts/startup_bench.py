"""Start-up at N entries (default 10M): the writer's and the compactor's.

Builds a data directory of N entries through the wal library (once, kept
under --dir; `set k<i>=<i>` payloads, 64 MiB segments, as
walctl.bench.recovery builds them; with --keys K the keys repeat,
`set k<i % K>=<i>`, so the state holds K keys), starts the real node on it,
waits until every process is ready, then:

- writer: kill -9 the writer, time until a `wal_append` is answered
  `wal_append_ok` again (median of --kills);
- compactor: kill -9 the compactor, time until `status` shows a new
  compactor `ready` (it has opened its state store and replayed the log
  after it; median of --kills), and its own recovery time;
- node: the first start, spawn to every process ready; then a graceful
  stop and a second start (the compactor loads the snapshot the stop wrote),
  spawn to every process ready, and the compactor's own recovery time.

    .venv/bin/python scripts/startup_bench.py --entries 10M --kills 3
    .venv/bin/python scripts/startup_bench.py --node-arg=--no-auto-compact

One JSON line of results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wal import DataDir, Log
from wal.log import DEFAULT_MAX_SEGMENT_BYTES
from walctl.bench.recovery import BUILD_BATCH, SLOW, append_until_ok, build, parse_size
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


def build_keyed(path: str, entries: int, keys: int) -> None:
    """As walctl.bench.recovery.build, with `keys` distinct keys."""
    if os.path.exists(os.path.join(path, "BUILT")):
        return
    datadir = DataDir(path)
    datadir.update_meta(max_segment_bytes=DEFAULT_MAX_SEGMENT_BYTES)
    log, _ = Log.open(datadir.wal_dir)
    try:
        for start in range(log.next_offset, entries, BUILD_BATCH):
            for i in range(start, min(start + BUILD_BATCH, entries)):
                log.append(b"set k%d=%d" % (i % keys, i))
            log.flush()
        log.sync()
    finally:
        log.close()
    with open(os.path.join(path, "BUILT"), "w") as f:
        f.write(f"{entries}\n")


def start(path: str, node_args: list[str]) -> tuple[Client, float]:
    """Spawn the node; (it, ms until every process is ready)."""
    t0 = time.monotonic()
    args = ["--unavailable-wait", str(SLOW), *node_args]
    node = Client.spawn(data_dir=path, args=args, timeout=SLOW)
    while not all(p.state == "ready" for p in node.status().processes):
        time.sleep(0.005)
    return node, round((time.monotonic() - t0) * 1000, 1)


def first_recovery(node: Client) -> dict:
    """The compactor's recovery at the node's first start: its time and the entries it replayed."""
    recovery = node.status().recoveries.get("compactor") or {}
    return {
        "compactor_recovery_at_start_ms": recovery.get("duration_ms"),
        "compactor_replayed_at_start": recovery.get("entries_recovered"),
    }


def measure(
    path: str, kills: int, compactor_kills: int, node_args: list[str], settle: float
) -> dict:
    node, ms = start(path, node_args)
    try:
        out: dict = {"node_start_ms": ms, **first_recovery(node)}
        writer, compactor, opens, own = [], [], [], []
        for _ in range(kills):
            time.sleep(settle)  # a crash of a node that ran a while, not one just restarted
            pid = node.status().process("writer").pid
            t = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            append_until_ok(node, SLOW)
            writer.append((time.monotonic() - t) * 1000)
            opens.append(node.status().recoveries["writer"]["duration_ms"])  # its Log.open
            wait_ready(node, "compactor", None, SLOW)  # it reconnects to the new writer
        for _ in range(compactor_kills):
            time.sleep(settle)
            pid = node.status().process("compactor").pid
            t = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            wait_ready(node, "compactor", pid, SLOW)
            compactor.append((time.monotonic() - t) * 1000)
            own.append(node.status().recoveries["compactor"]["duration_ms"])  # its recover()
        out["writer_kill_to_append_ms"] = round(statistics.median(writer), 1)
        out["writer_all_ms"] = [round(x, 1) for x in writer]
        out["writer_recovery_ms"] = round(statistics.median(opens), 1)
        if compactor:
            out["compactor_kill_to_ready_ms"] = round(statistics.median(compactor), 1)
            out["compactor_all_ms"] = [round(x, 1) for x in compactor]
            out["compactor_recovery_all_ms"] = [round(x, 1) for x in own]
        t = time.monotonic()
        node.close(timeout=SLOW)
        out["graceful_stop_ms"] = round((time.monotonic() - t) * 1000, 1)
    finally:
        node.kill()
    node, out["node_restart_after_stop_ms"] = start(path, node_args)
    try:
        recovery = node.status().recoveries.get("compactor") or {}
        out["compactor_recovery_after_stop_ms"] = recovery.get("duration_ms")
        out["compactor_replayed_after_stop"] = recovery.get("entries_recovered")
        node.close(timeout=SLOW)
    finally:
        node.kill()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", default="10M")
    p.add_argument("--dir", default="/tmp/walnode-startup")
    p.add_argument("--kills", type=int, default=3, help="writer kills (median shown)")
    p.add_argument("--compactor-kills", type=int, default=3)
    p.add_argument("--keys", type=int, default=0, help="distinct keys (0: one per entry)")
    p.add_argument("--node-arg", action="append", default=[], help="passed to node.py")
    p.add_argument("--settle", type=float, default=1.0, help="seconds idle before each kill")
    p.add_argument(
        "--no-snapshots",
        action="store_true",
        help="remove DIR/snapshots first: the first start replays the whole log",
    )
    args = p.parse_args(argv)
    n = parse_size(args.entries)
    path = os.path.join(args.dir, f"{n}-{DEFAULT_MAX_SEGMENT_BYTES}")
    t0 = time.monotonic()
    if args.keys:
        path += f"-keys{args.keys}"
        build_keyed(path, n, args.keys)
    else:
        build(path, n, DEFAULT_MAX_SEGMENT_BYTES)
    built_s = round(time.monotonic() - t0, 1)
    if args.no_snapshots:
        shutil.rmtree(os.path.join(path, "snapshots"), ignore_errors=True)
    result = measure(path, args.kills, args.compactor_kills, args.node_arg, args.settle)
    print(json.dumps({"entries": n, "keys": args.keys or n, "build_s": built_s, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
