"""walctl crashtest --power-loss: cut the power under a live walnode, then start it again.

A real walnode (`python node.py`, as a user starts it) takes appends with N
in flight under the chosen --fsync policy while every change its processes
make under the data directory is traced (wal/fstrace.py), with an `ack`
record written into the same trace as each wal_append_ok arrives. Then
the power is cut at --cuts points of that trace through the disk model of
wal/powerloss.py (each file and each directory keeps its own prefix of what
was not synced), walnode is started on what the disk kept, and its log is
read back: the verdict per cut says what had been acknowledged by then,
what is lost or duplicated, whether walnode refused to start, and how long
it took to serve again. docs/CRASHTEST.md explains the method and results.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import msgpack

from wal import powerloss
from wal.fstrace import ROOT_ENV, TRACE_ENV
from walctl.crashtest import PAYLOAD_RE, Ledger, Load, Node
from walnode import node_command

POLICY_RE = re.compile(r"always|never|interval:\d+ms")
KEEPS = ("durable only", "directories kept, file data lost", "file data kept, directories lost")


@dataclass
class CutVerdict:
    cut: int
    trace_record: int  # the power went right before this record of the trace
    before: str  # that record's kind (a sync: the most a cut can lose)
    keep: str  # what the disk kept of the unsynced changes
    acknowledged: int  # appends acknowledged before the cut
    lost: int = 0  # acknowledged, and not at their offset after the restart
    duplicated: int = 0  # one append at two offsets
    compacted: int = 0  # acknowledged below the restarted log's first offset (in a snapshot)
    refused: bool = False  # walnode did not start and serve
    restart_ms: float | None = None  # start -> init answered (the writer has recovered)
    first_offset: int | None = None
    next_offset: int | None = None
    bytes_truncated: int = 0  # the torn tail the writer cut
    examples: list[str] = field(default_factory=list)


class TracedLoad:
    """The load phase: appends with `in_flight` unanswered, acks traced."""

    def __init__(self, args: argparse.Namespace, data_dir: str, trace: str) -> None:
        self.ledger = Ledger(args.keys)
        self.ack_of: dict[int, int] = {}  # request index -> offset
        self.trace_fd = os.open(trace, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.trace_lock = threading.Lock()
        traced = ["env", f"{TRACE_ENV}={trace}", f"{ROOT_ENV}={os.path.abspath(data_dir)}"]
        self.node = Node(traced + node_argv(args, data_dir), self.on_append_reply)
        self.load = Load(self.node, self.ledger, args.in_flight)
        self.seconds = 0.0  # the load's duration, init_ok to the last counted ack

    def on_append_reply(self, i: int, body: dict, t: float, held_slot: bool) -> None:
        if self.ledger.record(i, body, t):
            with self.trace_lock:  # after the reply arrived: after the fsync it waited for
                os.write(self.trace_fd, msgpack.packb(["ack", i, body["offset"]]))
        if held_slot:
            self.load.answered(i)

    def run(self, appends: int, timeout: float = 120.0) -> int | None:
        """Until `appends` are acknowledged; walnode's exit status at end of input."""
        try:
            r = self.node.call({"type": "init", "node_id": "n1", "node_ids": ["n1"]}, 30)
            if r is None or r["type"] != "init_ok":
                raise RuntimeError(f"walnode did not answer init: {r}")
            self.load.thread.start()
            t0 = time.monotonic()
            deadline = t0 + timeout
            while self.ledger.acked < appends and self.node.alive:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {self.ledger.acked} appends acknowledged")
                time.sleep(0.01)
            self.seconds = time.monotonic() - t0
            self.load.stop()
            return self.node.close()
        finally:
            self.node.kill()
            os.close(self.trace_fd)


def node_argv(args: argparse.Namespace, data_dir: str) -> list[str]:
    argv = [*node_command(), "--data-dir", data_dir, "--fsync", args.fsync]
    for flag in ("snapshot_every", "keep_entries", "max_segment_bytes"):
        argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    return argv


def choose_cuts(records: list, n: int, rng: random.Random) -> dict[int, str]:
    """`n` trace positions, half right before a sync, and what the disk keeps at
    each. One is always right before the last sync (the stop's, after the whole
    load was acknowledged), keeping only what was durable: the most a policy can lose."""
    events = [k for k, r in enumerate(records) if r[0] not in ("ack", "close")]
    syncs = [k for k in events if records[k][0] == "sync"]
    others = [k for k in events if records[k][0] != "sync"]
    at_syncs = syncs[-1:] + rng.sample(syncs[:-1], min(len(syncs) - 1, (n + 1) // 2 - 1))
    rest = rng.sample(others, min(len(others), n - len(at_syncs)))
    # the corner cases and a random mix in turn, so every campaign covers each
    cuts = {k: (*KEEPS, "random")[j % 4] for j, k in enumerate(sorted(at_syncs[1:] + rest))}
    if syncs:
        cuts[syncs[-1]] = "durable only"
    return cuts


def restart_and_read(args: argparse.Namespace, root: str, verdict: CutVerdict) -> dict[int, int]:
    """Start walnode on `root` and read its whole log: offset -> request index."""
    node = Node(node_argv(args, root), lambda *_: None)
    at: dict[int, int] = {}
    try:
        t0 = time.monotonic()
        r = node.call({"type": "init", "node_id": "n1", "node_ids": ["n1"]}, timeout=30)
        if r is None or r["type"] != "init_ok":
            verdict.refused = True
            verdict.examples += [f"no init_ok: {r}", *list(node.stderr_tail)[-3:]]
            return at
        verdict.restart_ms = round((time.monotonic() - t0) * 1000, 1)
        status = node.call({"type": "status"}, timeout=10) or {}
        recovery = status.get("recoveries", {}).get("writer") or {}
        verdict.bytes_truncated = recovery.get("bytes_truncated", 0)
        info = node.call({"type": "wal_info"}, timeout=10) or {}
        verdict.first_offset, verdict.next_offset = (
            info.get("first_offset"),
            info.get("next_offset"),
        )
        cursor = verdict.first_offset or 0
        while verdict.next_offset is not None and cursor < verdict.next_offset:
            scan = {"type": "wal_scan", "from_offset": cursor, "max_entries": 10_000}
            r = node.call(scan, timeout=10)
            if r is None or r["type"] != "wal_scan_ok" or not r["entries"]:
                verdict.examples.append(f"wal_scan from {cursor}: {r}")
                break
            for e in r["entries"]:
                m = PAYLOAD_RE.fullmatch(e["payload"])
                at[e["offset"]] = int(m.group(2)) if m else -1
            cursor = r["next_offset"]
        if node.close(30) != 0:
            verdict.examples.append("walnode did not exit 0 at end of input")
    finally:
        node.kill()
    return at


def judge(verdict: CutVerdict, acked: dict[int, int], at: dict[int, int]) -> None:
    """Compare what was acknowledged before the cut with the restarted log."""
    if verdict.refused:
        return
    first = verdict.first_offset or 0
    for i, offset in acked.items():
        if offset < first:
            verdict.compacted += 1
        elif at.get(offset) != i:
            verdict.lost += 1
            if len(verdict.examples) < 3:
                verdict.examples.append(f"append {i} acknowledged at offset {offset} is gone")
    seen = collections.Counter(i for i in at.values() if i >= 0)
    verdict.duplicated = sum(n - 1 for n in seen.values() if n > 1)


def run_cuts(args: argparse.Namespace, data_dir: str, trace: str, progress) -> list[CutVerdict]:
    """Replay the trace into the model, cut at the chosen points; walnode is
    started on each cut's directory, `args.jobs` at a time."""
    records = powerloss.read_trace(trace)
    rng = random.Random(args.seed)
    cuts = choose_cuts(records, args.cuts, rng)
    disk = powerloss.Disk(data_dir)
    acked: dict[int, int] = {}
    scratch = tempfile.mkdtemp(prefix="walnode-powercut-")
    verdicts: list[CutVerdict] = []

    def check(v: CutVerdict, root: str, acked_then: dict[int, int]) -> None:
        judge(v, acked_then, restart_and_read(args, root, v))
        shutil.rmtree(root, ignore_errors=True)
        progress.update(1)

    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            running = []
            for k, r in enumerate(records):
                if r[0] == "ack":
                    acked[r[1]] = r[2]
                    continue
                if k in cuts:
                    keep = powerloss.random_keep(disk, rng) if cuts[k] == "random" else None
                    keep = keep or next(e for e in disk.extremes() if e.how == cuts[k])
                    v = CutVerdict(len(verdicts) + 1, k, r[0], keep.how, len(acked))
                    root = os.path.join(scratch, f"cut{v.cut}")
                    powerloss.materialize(disk.crash_state(keep), root)
                    verdicts.append(v)
                    running.append(pool.submit(check, v, root, dict(acked)))
                disk.apply(r)
            for f in running:
                f.result()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return verdicts


def _ms(value: float | None) -> str:
    """A time for the summary, to 0.1 ms (a median of two is their mean: 909.5999999999999)."""
    return "-" if value is None else f"{value:.1f} ms"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def build_report(args: argparse.Namespace, load: TracedLoad, exit_status, verdicts) -> dict:
    times = [v.restart_ms for v in verdicts if v.restart_ms is not None]
    report = {
        "mode": "power-loss",
        "fsync": args.fsync,
        "seed": args.seed,
        "cuts": len(verdicts),
        "acknowledged": load.ledger.acked,
        "acknowledged_at_cuts": sum(v.acknowledged for v in verdicts),
        "acks_per_s": round(load.ledger.acked / load.seconds) if load.seconds else None,
        "lost": sum(v.lost for v in verdicts),
        "cuts_with_loss": sum(1 for v in verdicts if v.lost),
        "most_lost_in_a_cut": max((v.lost for v in verdicts), default=0),
        "duplicated": sum(v.duplicated for v in verdicts),
        "refused_starts": sum(1 for v in verdicts if v.refused),
        "restart_ms": {
            "p50": statistics.median(times) if times else None,
            "p99": percentile(times, 0.99),
            "worst": max(times) if times else None,
        },
        "load_exit_status": exit_status,
        "per_cut": [asdict(v) for v in verdicts],
    }
    failures = []
    if report["refused_starts"]:
        failures.append(f"{report['refused_starts']} refused start(s)")
    if report["duplicated"]:
        failures.append(f"{report['duplicated']} duplicated")
    if report["lost"] and args.fsync == "always":
        failures.append(f"{report['lost']} acknowledged appends lost under --fsync always")
    if len(verdicts) < args.cuts:
        failures.append(f"only {len(verdicts)} of {args.cuts} cuts: the trace is too short")
    report["failures"], report["passed"] = failures, not failures
    return report


def print_report(r: dict) -> None:
    lines = [
        f"walctl crashtest --power-loss: {r['cuts']} cuts, --fsync {r['fsync']}, seed {r['seed']}",
        f"  {'cut':>4} {'before':<9}{'kept':<34}{'acked':>7}{'lost':>6}{'dup':>5}"
        f"{'restart ms':>12}  verdict",
    ]
    for v in r["per_cut"]:
        verdict = "REFUSED" if v["refused"] else ("LOST" if v["lost"] else "ok")
        ms = "-" if v["restart_ms"] is None else f"{v['restart_ms']:.0f}"
        lines.append(
            f"  {v['cut']:>4} {v['before']:<9}{v['keep']:<34}{v['acknowledged']:>7}"
            f"{v['lost']:>6}{v['duplicated']:>5}{ms:>12}  {verdict}"
        )
    t = r["restart_ms"]
    lines += [
        f"acknowledged: {r['acknowledged']} in the load ({r['acks_per_s']}/s, traced); "
        f"{r['acknowledged_at_cuts']} summed over the cuts (what was acknowledged before each)",
        f"lost: {r['lost']} (in {r['cuts_with_loss']} cuts, at most {r['most_lost_in_a_cut']} "
        f"in one); duplicated: {r['duplicated']}; refused starts: {r['refused_starts']}",
        f"restart to serving: p50 {_ms(t['p50'])}, p99 {_ms(t['p99'])}, worst {_ms(t['worst'])}",
    ]
    if r["lost"] and r["fsync"] != "always":
        lines.append(f"(--fsync {r['fsync']} acknowledges before the fsync: it may lose these)")
    lines.append("PASS" if r["passed"] else "FAIL: " + "; ".join(r["failures"]))
    print("\n".join(lines), flush=True)


def write_png(path: str, r: dict) -> None:
    """Per cut: acknowledged before it and lost after it; restart time beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cuts = r["per_cut"]
    x = [v["cut"] for v in cuts]
    fig, ax = plt.subplots(figsize=(max(8, len(cuts) / 4), 4.5))
    ax.bar(x, [v["acknowledged"] for v in cuts], color="tab:blue", alpha=0.35, label="acked")
    ax.bar(x, [v["lost"] for v in cuts], color="tab:red", label="lost")
    for v in cuts:
        if v["refused"]:
            ax.axvline(v["cut"], color="black", lw=1.5)
    ax.set_xlabel("cut")
    ax.set_ylabel("appends")
    times = ax.twinx()
    times.plot(x, [v["restart_ms"] for v in cuts], "o", color="tab:green", ms=3, label="restart")
    times.set_ylabel("restart to serving, ms")
    times.set_ylim(bottom=0)
    ax.set_title(
        f"walnode power cuts under --fsync {r['fsync']}: {r['lost']} lost, "
        f"{r['refused_starts']} refused of {r['cuts']}"
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("power loss (--power-loss)")
    g.add_argument(
        "--power-loss",
        action="store_true",
        help="cut the power (a disk model over a traced load) instead of killing processes",
    )
    g.add_argument("--cuts", type=int, default=20, metavar="N", help="power cuts (20)")
    g.add_argument(
        "--fsync", default="always", metavar="POLICY", help="always | never | interval:MSms"
    )
    g.add_argument(
        "--appends", type=int, default=3000, metavar="N", help="appends in the load (3000)"
    )
    g.add_argument(
        "--jobs", type=int, default=2, metavar="N", help="walnodes started on cuts at once (2)"
    )


def run(args: argparse.Namespace) -> int:
    """`walctl crashtest --power-loss`: 0 if the verdict passes, 1 if not, 2 if it cannot run."""
    if not POLICY_RE.fullmatch(args.fsync):
        return usage(f"--fsync {args.fsync!r}: give always, never or interval:MSms")
    if min(args.cuts, args.appends, args.jobs, args.in_flight, args.keys) < 1:
        return usage("--cuts, --appends, --jobs, --in-flight and --keys must be positive")
    if args.data_dir and os.path.isdir(args.data_dir) and os.listdir(args.data_dir):
        return usage(f"{args.data_dir} is not empty; give a new or empty directory")
    from tqdm import tqdm

    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    work = tempfile.mkdtemp(prefix="walnode-powerloss-")
    data_dir = args.data_dir or os.path.join(work, "data")
    os.makedirs(data_dir, exist_ok=True)
    trace = os.path.join(work, "trace")
    print(f"walctl crashtest --power-loss: data in {data_dir}, seed {args.seed}", file=sys.stderr)
    try:
        load = TracedLoad(args, data_dir, trace)
        exit_status = load.run(args.appends)
        with tqdm(total=args.cuts, unit="cut", disable=args.no_progress) as progress:
            verdicts = run_cuts(args, data_dir, trace, progress)
    finally:
        if not args.keep_data:
            shutil.rmtree(work, ignore_errors=True)
    report = build_report(args, load, exit_status, verdicts)
    print_report(report)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.png:
        write_png(args.png, report)
    return 0 if report["passed"] else 1


def usage(text: str) -> int:
    print(f"walctl crashtest --power-loss: {text}", file=sys.stderr)
    return 2
