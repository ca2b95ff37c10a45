#!/usr/bin/env python3
"""The compactor's live-tail read in one process: CPU per entry.

Builds (once) a log whose newest segment holds --entries records of
`set k<i % keys>=<value>` (about 100 bytes each, like `walctl bench`'s), with
its checkpoint removed, so that LogTail walks the whole segment by its
headers as the compactor does past the checkpointed prefix (the live tail).
Then times, in CPU seconds of this process, LogTail.read_runs alone and
read_runs followed by StateMachine.apply_run, --repeat times each, and
prints µs per entry. `--code DIR` imports `wal` from another checkout (the
code before a change) on the same data:

    python scripts/tail_bench.py --data /tmp/tail-data
    python scripts/tail_bench.py --data /tmp/tail-data --code /work/main
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def build(data: str, entries: int, keys: int) -> None:
    from wal import Log

    os.makedirs(data)
    log, _ = Log.open(data, max_segment_bytes=1 << 30)
    try:
        for i in range(entries):
            log.append(b"set k%05d=%s" % (i % keys, b"v" * 80 + b"%09d" % i))
            if i % 1000 == 999:
                log.sync()
        log.sync()
    finally:
        log.close()
    for name in os.listdir(data):
        if name.endswith(".ckpt"):
            os.unlink(os.path.join(data, name))  # the live tail has no checkpoint yet


def replay(data: str, entries: int, apply: bool) -> float:
    """CPU seconds to read (and apply) every entry once."""
    from wal.statemachine import StateMachine
    from wal.tail import LogTail

    sm = StateMachine()
    tail = LogTail(data, 0)
    t0 = time.process_time()
    try:
        read = 0
        for payloads, _ in tail.read_runs(entries):
            read += len(payloads)
            if apply:
                sm.apply_run(payloads)
    finally:
        tail.close()
    seconds = time.process_time() - t0
    assert read == entries and (not apply or sm.applied_offset == entries)
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the log's directory (built if missing)")
    p.add_argument("--entries", type=int, default=333_655)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--code", default=None, help="import wal from this checkout instead")
    args = p.parse_args()
    if args.code:
        sys.path.insert(0, os.path.abspath(args.code))
    import wal

    if not os.path.exists(args.data):
        build(args.data, args.entries, args.keys)
    for apply in (False, True):
        runs = [replay(args.data, args.entries, apply) for _ in range(args.repeat)]
        per = sorted(1e6 * s / args.entries for s in runs)
        what = "read_runs + apply_run" if apply else "read_runs alone"
        print(
            f"{what:22} {per[len(per) // 2]:.3f} µs/entry (min {per[0]:.3f}, max {per[-1]:.3f}; "
            f"{args.entries} entries, {args.repeat} runs, wal from {os.path.dirname(wal.__file__)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
