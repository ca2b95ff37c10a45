"""`make demo`: a short scripted walnode session, shown line by line.

Run 1 appends, reads and asks for info; walnode exits at end of input.
Run 2 starts again on the same data directory and reads the entries back:
the log survived the stop/start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def session(data_dir: str, bodies: list[dict]) -> None:
    lines = []
    for i, body in enumerate(bodies, 1):
        msg = {"src": "c1", "dest": "n1", "body": {**body, "msg_id": i}}
        lines.append(json.dumps(msg))
        print(f"  -> {lines[-1]}")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "node.py"), "--data-dir", data_dir],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    for line in proc.stdout.splitlines():
        print(f"  <- {line}")
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        sys.exit(f"walnode exited with {proc.returncode}")


def main() -> None:
    data_dir = os.path.join(tempfile.mkdtemp(prefix="walnode-demo-"), "data")
    init = {"type": "init", "node_id": "n1", "node_ids": ["n1"]}
    print(f"walnode demo; data directory {data_dir}\n")
    print("run 1: append, read back, info")
    session(
        data_dir,
        [
            init,
            {"type": "wal_append", "payload": "set x=42"},
            {"type": "wal_append", "payload": "set y=7"},
            {"type": "wal_append", "payload": "del x"},
            {"type": "wal_read", "offset": 0},
            {"type": "wal_info"},
        ],
    )
    print("\nrun 2: a new walnode on the same directory; the entries are still there")
    session(
        data_dir,
        [
            init,
            {"type": "wal_scan", "from_offset": 0},
            {"type": "wal_append", "payload": "set z=1"},
            {"type": "wal_segment_info"},
        ],
    )
    print(f"\nlook inside offline:  .venv/bin/walctl dump {data_dir}")


if __name__ == "__main__":
    main()
