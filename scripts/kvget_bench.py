"""kv_get latency: lone requests (one in flight), round trip through the node.

Starts the node (`--node` picks a checkout's node.py, e.g. main's, to
compare) on a fresh directory, sets --keys keys (`set k<i>=<i>`), waits
--settle seconds (the compactor's state store commits every second, so the
keys are then read from the store, not from its overlay), then times
--gets lone kv_get of random keys and prints one JSON line: p50, p90, p99
in µs. With --dir DIR an existing data directory is used as it is (no
keys set; --keys says how many `k<i>` it holds, e.g. the 10M directory of
scripts/startup_bench.py).

    .venv/bin/python scripts/kvget_bench.py --keys 10000
    .venv/bin/python scripts/kvget_bench.py --node /work/main/node.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from walnode import Client


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--gets", type=int, default=3000)
    p.add_argument("--settle", type=float, default=2.5)
    p.add_argument("--dir", default=None, help="an existing data directory, used as it is")
    p.add_argument("--node", default=None, help="node.py to run (default: this checkout's)")
    p.add_argument("--node-arg", action="append", default=["--no-auto-compact"])
    args = p.parse_args(argv)
    scratch = None if args.dir else tempfile.mkdtemp(prefix="kvget-")
    path = args.dir or os.path.join(scratch, "data")  # type: ignore[arg-type]
    command = [sys.executable, args.node] if args.node else None
    node = Client.spawn(data_dir=path, args=args.node_arg, command=command, timeout=600)
    try:
        while not all(proc.state == "ready" for proc in node.status().processes):
            time.sleep(0.01)
        if scratch:
            futures = node.requests_async(
                {"type": "wal_append", "payload": f"set k{i}={i}"} for i in range(args.keys)
            )
            for f in futures:
                f.result(60)
        time.sleep(args.settle)
        node.request({"type": "kv_get", "key": "k0"}, timeout=600)  # any catch-up first
        rng = random.Random(1)
        times = []
        for _ in range(args.gets):
            key = f"k{rng.randrange(args.keys)}"
            t = time.perf_counter()
            reply = node.request({"type": "kv_get", "key": key}, timeout=60)
            times.append((time.perf_counter() - t) * 1e6)
            assert reply["type"] == "kv_get_ok", reply
        times.sort()
        pick = {q: round(times[int(len(times) * q / 100)], 1) for q in (50, 90, 99)}
        quantiles = {f"p{q}_us": v for q, v in pick.items()}
        print(json.dumps({"keys": args.keys, "gets": args.gets, **quantiles}))
    finally:
        node.close(timeout=600)
        node.kill()
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
