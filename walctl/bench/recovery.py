"""Writer recovery time and memory vs entries retained (issue #5).

For each size N: build a data directory holding N entries through the wal
library (kept under --work-dir and reused by later runs), start the real
node on it (`node.py --data-dir DIR --no-auto-compact`), init, wait until
every process is ready, then kill -9 the writer and time how long until a
`wal_append` is answered `wal_append_ok` again. Also reported: the
recovery time the restarted writer logs ("recovered N entries ... in X
ms") and its memory (/proc/PID/status) once it serves.

    .venv/bin/python -m walctl.bench.recovery                    # 10k, 100k, 1M, 10M
    .venv/bin/python -m walctl.bench.recovery --sizes 10k,100k   # a quick run

Building 10M entries takes a few minutes and ~290 MB of disk; starting the
node on it takes longer still, because the compactor replays every entry at
its start (that is not what is measured: the writer is killed only once all
processes are ready).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time

from wal import DataDir, Log
from wal.log import DEFAULT_MAX_SEGMENT_BYTES
from walnode import Client

BUILD_BATCH = 100_000  # entries per flush while building
SLOW = 1800  # seconds: a ceiling for steps that scale with the log (before the index)
RECOVERED_RE = re.compile(r"recovered (\d+) entries .* in ([\d.]+) ms")


def parse_size(text: str) -> int:
    """`10k`, `1M`, `10M` or a plain number."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    return int(text[:-1] if scale > 1 else text) * scale


def build(path: str, entries: int, segment_bytes: int) -> None:
    """A data directory holding `entries` entries `set k<i>=<i>`, made once."""
    done = os.path.join(path, "BUILT")
    if os.path.exists(done):
        return
    datadir = DataDir(path)
    datadir.update_meta(max_segment_bytes=segment_bytes)
    log, _ = Log.open(datadir.wal_dir, max_segment_bytes=segment_bytes)
    try:
        for start in range(log.next_offset, entries, BUILD_BATCH):
            for i in range(start, min(start + BUILD_BATCH, entries)):
                log.append(b"set k%d=%d" % (i, i))
            log.flush()
        log.sync()
    finally:
        log.close()
    with open(done, "w") as f:
        f.write(f"{entries}\n")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and its anonymous and file-backed parts, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out


def append_until_ok(node: Client, timeout: float) -> None:
    """Send appends until one is acknowledged (error 13/11 while the writer restarts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = node.request({"type": "wal_append", "payload": "set bench=1"}, timeout=timeout)
        if reply["type"] == "wal_append_ok":
            return
    raise AssertionError(f"no wal_append_ok within {timeout} s")


def logged_recovery(node: Client, since: int) -> tuple[int, float] | None:
    """(entries, ms) of the newest "recovered ..." line of the writer after `since`."""
    for line in reversed(node.stderr_lines[since:]):
        if "writer" in line and (m := RECOVERED_RE.search(line)):
            return int(m.group(1)), float(m.group(2))
    return None


def measure(path: str, kills: int) -> dict:
    started = time.monotonic()
    # the writer may take long to open a big log the first time: wait for it
    args = ["--no-auto-compact", "--unavailable-wait", str(SLOW)]
    node = Client.spawn(data_dir=path, args=args, timeout=SLOW)
    try:
        while not all(p.state == "ready" for p in node.status().processes):
            if time.monotonic() - started > SLOW:
                raise AssertionError("the node did not become ready")
            time.sleep(0.5)
        result: dict = {"start_s": round(time.monotonic() - started, 1)}
        first = logged_recovery(node, 0)
        result["first_open_ms"] = first[1] if first else None  # may build missing indexes
        to_append, logged, rss = [], [], []
        for _ in range(kills):
            pid = node.status().process("writer").pid
            mark = len(node.stderr_lines)
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            append_until_ok(node, SLOW)
            to_append.append((time.monotonic() - t0) * 1000)
            new_pid = node.status().process("writer").pid
            deadline = time.monotonic() + 5
            while logged_recovery(node, mark) is None and time.monotonic() < deadline:
                time.sleep(0.02)
            entries, ms = logged_recovery(node, mark) or (None, None)
            result["entries"] = entries
            logged.append(ms)
            rss.append(memory_kib(new_pid))  # type: ignore[arg-type]
        result["kill_to_append_ms"] = round(statistics.median(to_append), 1)
        result["kill_to_append_all_ms"] = [round(t, 1) for t in to_append]
        result["logged_recovery_ms"] = statistics.median(x for x in logged if x is not None)
        result["writer_kib"] = rss[-1]
        return result
    finally:
        node.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10k,100k,1M,10M", help="comma-separated entry counts")
    p.add_argument(
        "--work-dir",
        default=os.path.join(tempfile.gettempdir(), "walnode-bench-recovery"),
        help="where the data directories are built and kept between runs",
    )
    p.add_argument("--max-segment-bytes", type=int, default=DEFAULT_MAX_SEGMENT_BYTES)
    p.add_argument("--kills", type=int, default=3, help="writer kills per size (median shown)")
    p.add_argument("--json", action="store_true", help="one JSON line per size")
    args = p.parse_args(argv)
    if not args.json:
        print(
            f"{'entries':>10} {'kill->append ms':>16} {'logged ms':>10} "
            f"{'RSS MiB':>8} {'anon MiB':>9} {'file MiB':>9}"
        )
    for text in args.sizes.split(","):
        n = parse_size(text)
        path = os.path.join(args.work_dir, f"{n}-{args.max_segment_bytes}")
        t0 = time.monotonic()
        build(path, n, args.max_segment_bytes)
        built_s = time.monotonic() - t0
        r = {"size": n, "build_s": round(built_s, 1), **measure(path, args.kills)}
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            kib = r["writer_kib"]
            print(
                f"{n:>10} {r['kill_to_append_ms']:>16} {r['logged_recovery_ms']:>10} "
                f"{kib['VmRSS'] / 1024:>8.1f} {kib['RssAnon'] / 1024:>9.1f} "
                f"{kib['RssFile'] / 1024:>9.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
