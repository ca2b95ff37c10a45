"""What a roll costs the writer's thread, with and without the next segment
prepared ahead (wal/prefill.py), through the wal library alone.

Group commits of --batch appends (100-byte records), each one flush and
fdatasync, into segments of --segment-bytes, so that rolls are frequent.
Runs alternate: `prepared` (Log.start_preparing, as the writer does) and
`created` (no preparer: the roll creates its segment and the writer's
thread zero-fills it, as before). Per run it prints the commit latency
p50/p99/max, the rolls' own time (the part after the old segment is sealed
and indexed: create or rename, directory fsync, and the first commit's
zero-fill), the commits' rate, and (prepared) the p99 of the commits begun
while the preparer was filling, beside the run's p99: what the fill's
writes cost the fdatasyncs they compete with.

    .venv/bin/python scripts/roll_bench.py --segment-bytes 1048576 --batch 64 --rounds 3
    .venv/bin/python scripts/roll_bench.py --repo /work/main --kinds created  # main's wal

The `roll commit` figures are the whole commit of a batch that rolled (seal,
index, the next segment, the batch's write and fdatasync): they need nothing
of wal/prefill.py, so `--repo` can point at a checkout from before it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

_repo = sys.argv[sys.argv.index("--repo") + 1] if "--repo" in sys.argv else None
sys.path.insert(0, _repo or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wal import Log  # noqa: E402


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))] * 1e6


def run(directory: str, prepared: bool, segment_bytes: int, batch: int, seconds: float) -> dict:
    log, _ = Log.open(directory, max_segment_bytes=segment_bytes)
    if prepared:
        log.start_preparing()
        time.sleep(0.2)  # the first one ready, as it is long before a writer's first roll
    payload = b"x" * 92
    commits: list[float] = []
    during_fill: list[float] = []  # commits begun while the preparer was filling
    rolls: list[float] = []  # the roll's new-segment part plus the next commit's flush
    roll_commits: list[float] = []  # the whole commit of a batch that rolled
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            count = log.segment_count
            for _ in range(batch):
                log.append(payload)
            rolled = log.segment_count != count
            t1 = time.perf_counter()
            log.sync()
            t2 = time.perf_counter()
            commits.append(t2 - t0)
            if prepared and log.preparer is not None and not log.preparer.ready:
                during_fill.append(t2 - t0)
            if rolled:
                roll_commits.append(t2 - t0)
                if hasattr(log, "rolls"):
                    # the sync's flush of the new segment's first batch made its room (or not)
                    rolls.append(log.rolls.last_new_seconds + (t2 - t1))
    finally:
        log.close()
    return {
        "kind": "prepared" if prepared else "created",
        "commits_per_s": len(commits) / seconds,
        "commit_p50_us": pct(commits, 0.5),
        "commit_p99_us": pct(commits, 0.99),
        "commit_max_us": max(commits) * 1e6,
        "roll_p50_us": pct(rolls, 0.5) if rolls else None,
        "roll_max_us": max(rolls) * 1e6 if rolls else None,
        "rolls": len(roll_commits),
        "roll_commit_p50_us": pct(roll_commits, 0.5) if roll_commits else 0,
        "roll_commit_max_us": max(roll_commits) * 1e6 if roll_commits else 0,
        "fill_p99_us": pct(during_fill, 0.99) if during_fill else None,
        "fill_commits": len(during_fill),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--segment-bytes", type=int, default=1 << 20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=None, help="parent of the scratch directories")
    p.add_argument("--repo", default=None, help="import wal from this checkout")
    p.add_argument("--kinds", default="created,prepared", help="created,prepared (alternated)")
    args = p.parse_args(argv)
    kinds = [k == "prepared" for k in args.kinds.split(",")]
    for r in range(args.rounds):
        for prepared in kinds if r % 2 == 0 else kinds[::-1]:
            directory = tempfile.mkdtemp(prefix="walnode-roll-bench-", dir=args.dir)
            try:
                got = run(directory, prepared, args.segment_bytes, args.batch, args.seconds)
            finally:
                shutil.rmtree(directory)
            print(
                f"round {r + 1} {got['kind']:8} {got['commits_per_s']:7.0f} commits/s  "
                f"commit p50 {got['commit_p50_us']:7.0f} p99 {got['commit_p99_us']:7.0f} "
                f"max {got['commit_max_us']:7.0f} us  roll+first commit p50 "
                f"{got['roll_p50_us'] or 0:7.0f} max {got['roll_max_us'] or 0:7.0f} us  "
                f"{got['rolls']} roll commits p50 {got['roll_commit_p50_us']:7.0f} "
                f"max {got['roll_commit_max_us']:7.0f} us"
                + (
                    f"  during a fill: {got['fill_commits']} commits, p99 {got['fill_p99_us']:.0f}"
                    if got["fill_commits"]
                    else ""
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
