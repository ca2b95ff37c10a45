"""The writer's fdatasync latency, measured on the real node.

Starts walnode on a fresh data directory, sends appends one at a time (each
waits for its reply, so every batch is one entry and one fdatasync), and
prints the writer's own `group_commit` figures from `wal_info`
(fsync_p50_us, fsync_p99_us over the last 4096 fdatasyncs).

    .venv/bin/python scripts/fdatasync_p50.py --appends 3000
    .venv/bin/python scripts/fdatasync_p50.py --node-arg=--max-segment-bytes=65536  # rolls
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from walnode import Client


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--appends", type=int, default=3000)
    p.add_argument("--dir", default=None, help="parent of the scratch data directory")
    p.add_argument("--node-arg", action="append", default=[], help="extra walnode flag")
    args = p.parse_args(argv)
    parent = tempfile.mkdtemp(prefix="walnode-fsync-p50-", dir=args.dir)
    try:
        node = Client.spawn(
            data_dir=os.path.join(parent, "data"), args=["--no-auto-compact", *args.node_arg]
        )
        try:
            payload = "set k=" + "x" * 94  # a ~108-byte record, as the raw row uses
            for _ in range(args.appends):
                node.append(payload)
            info = node.request({"type": "wal_info"})
        finally:
            node.close()
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    print(json.dumps({"appends": args.appends, **info["group_commit"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
