"""walctl bench: durable appends/s and latency of a real walnode, beside its peers.

A fresh walnode (started as `python node.py --data-dir DIR`, driven over
its stdin and stdout) takes 100-byte wal_append requests with N always in
flight, for each N in --levels; then the same appends go to sqlite3,
rocksdict, lmdb, a raw write+fdatasync loop and the disk's ceiling, all on
the same file system. One table, the ratios and the performance targets are
printed; --json and --png save them. docs/BENCHMARKS.md has the method.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

DEFAULT_LEVELS = "1,8,64,256,1000"


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"levels must be integers like 1,8,64 (got {text!r})"
        ) from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("levels must be positive integers")
    return sorted(set(levels))


def _peers(text: str) -> list[str]:
    from walctl.bench.peers import PEERS

    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in PEERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {bad}; choose from {','.join(PEERS)}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--levels", type=_levels, default=None, help=f"requests in flight ({DEFAULT_LEVELS})"
    )
    p.add_argument(
        "--seconds", type=float, default=None, help="measured seconds per level and peer (3)"
    )
    p.add_argument("--warmup", type=float, default=None, help="seconds of warm-up before each (1)")
    p.add_argument(
        "--peers",
        type=_peers,
        default=None,
        help="sqlite,rocksdict,lmdb,raw,ceiling (all); '' for none",
    )
    p.add_argument("--json", metavar="FILE", help="write every number to FILE")
    p.add_argument("--png", metavar="FILE", help="write the chart to FILE (needs matplotlib)")
    p.add_argument("--markdown", metavar="FILE", help="write the tables as markdown to FILE")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="put the files in a new directory under DIR (default: under $TMPDIR or /tmp)",
    )
    p.add_argument(
        "--snapshot-level",
        type=int,
        default=None,
        help="in-flight level of the snapshot+compaction comparison (64; 0 skips it)",
    )
    p.add_argument(
        "--snapshot-every",
        type=float,
        default=None,
        help="seconds between the end of one snapshot+compact cycle and the next (0.5)",
    )
    p.add_argument(
        "--node-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra walnode flag, repeatable (e.g. --node-arg=--no-auto-compact)",
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="also run the top level once under py-spy; stacks and a summary go to DIR",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds: each measures every system once, alternating; ratios are taken inside "
        "a round and reported as the median over rounds with min-max (3; --quick: 2)",
    )
    p.add_argument(
        "--baseline",
        metavar="NODE_PY",
        help="also run another walnode (a checkout's node.py, e.g. the code before a change) "
        "in every round, beside this one",
    )
    p.add_argument(
        "--no-client-ceiling",
        action="store_true",
        help="skip the client's ceiling (the same closed loop against a node without a disk)",
    )
    p.add_argument("--keep", action="store_true", help="keep the benchmark's files")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: levels 1,8, 0.3 s each, 0.1 s warm-up (for tests)",
    )
    from walctl.bench import cluster  # --cluster: the replicated scenario, in its own module

    cluster.add_arguments(p)


def _settings(args: argparse.Namespace) -> dict:
    quick = args.quick
    levels = args.levels or ([1, 8] if quick else _levels(DEFAULT_LEVELS))
    snapshot_level = args.snapshot_level
    if snapshot_level is None:
        snapshot_level = max(levels) if quick else 64
    return {
        "levels": levels,
        "rounds": args.rounds if args.rounds is not None else (2 if quick else 3),
        "baseline": os.path.abspath(args.baseline) if args.baseline else None,
        "client_ceiling": not args.no_client_ceiling,
        "seconds": args.seconds if args.seconds is not None else (0.2 if quick else 2.0),
        "warmup": args.warmup if args.warmup is not None else (0.1 if quick else 1.0),
        "peers": args.peers
        if args.peers is not None
        else ["sqlite", "rocksdict", "lmdb", "raw", "ceiling"],
        "snapshot_level": snapshot_level,
        "snapshot_every": args.snapshot_every
        if args.snapshot_every is not None
        else (0.05 if quick else 0.5),
        "node_args": list(args.node_arg),
        "payload_bytes": 100,
    }


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from walctl.bench import appends

    if args.cluster:
        from walctl.bench import cluster

        return cluster.run(args)

    try:
        return _run(args)
    except appends.NodeFailed as err:
        say(f"walctl bench: {err}")
        return 1


def _run(args: argparse.Namespace) -> int:
    from walctl.bench import report, rounds

    s = _settings(args)
    if args.png and not _chart_available():  # before minutes of measuring, not after
        return 2
    sampler = None
    if args.profile:
        sampler = _sampler(args.profile, s["seconds"])
        if sampler is None:
            return 2
    parent = args.data_dir or None
    if parent:
        os.makedirs(parent, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="walnode-bench-", dir=parent)
    results = _header(directory, s)
    try:
        results["rounds"] = [_one_round(directory, s, i) for i in range(s["rounds"])]
        snapshot = _snapshot_comparison(directory, s) if s["snapshot_level"] else None
        if sampler is not None:
            results["profile"] = _profiled_level(directory, s, sampler, args.profile)
    finally:
        if args.keep:
            say(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)

    for key in ("walnode", "baseline", "null", "peers"):
        results[key] = rounds.median_rows(results["rounds"], key)
    results["snapshot"] = snapshot
    results["ratios"] = rounds.ratios(results["rounds"], s["levels"])
    results["targets"] = report.targets(results["ratios"], results["walnode"], snapshot)
    _write_files(args, results)
    _print_results(results)
    verified = all(
        w["verified"] for r in results["rounds"] for w in r["walnode"] + r["baseline"]
    ) and (snapshot is None or snapshot["verified"])
    return 0 if verified else 1


def _one_round(directory: str, s: dict, index: int) -> dict:
    """Every system once: at each level walnode, the baseline, the client's
    ceiling and the disk's, one after the other; then the one-at-a-time peers."""
    from walctl.bench import nullnode, report

    say(f"round {index + 1} of {s['rounds']}")
    tag = _round_tag(index)
    out: dict = {"walnode": [], "baseline": [], "null": [], "peers": []}
    for n in s["levels"]:
        out["walnode"].append(_node_level(directory, s, n, tag, "walnode", None))
        if s["baseline"]:
            command = [sys.executable, s["baseline"]]
            out["baseline"].append(_node_level(directory, s, n, tag + "-base", "baseline", command))
        if s["client_ceiling"]:
            command = [sys.executable, "-m", nullnode.__name__]
            out["null"].append(_node_level(directory, s, n, tag + "-null", "null", command))
            if n == 1:  # the read's floor: the pipe's (the null node's reads) and zmq's
                out["peers"].append(_zmq_row(s))
        if "ceiling" in s["peers"]:
            out["peers"].append(_peer_row(directory, s, "ceiling", n))
    for name in s["peers"]:
        if name != "ceiling":
            out["peers"].append(_peer_row(directory, s, name, 1))
    out["peers"] = [report.peer_row(p) for p in out["peers"]]
    return out


def _round_tag(index: int) -> str:
    """The suffix of a round's data directories: the first round's keep plain names."""
    return f"-r{index + 1}" if index else ""


def _chart_available() -> bool:
    from walctl.bench import chart

    try:
        chart.require()
    except chart.ChartUnavailable as err:
        say(f"walctl bench: {err}")
        return False
    return True


def _sampler(stacks_dir: str, seconds: float):  # -> profile.Sampler | None
    from walctl.bench import profile

    try:
        return profile.Sampler(stacks_dir, seconds)
    except profile.ProfilerUnavailable as err:
        say(f"walctl bench: {err}")
        return None


def _header(directory: str, s: dict) -> dict:
    """The results' identity (command, date, commit, machine, settings), and a
    warning on stderr if the machine is busy."""
    from walctl.bench import report

    results: dict = {
        "command": " ".join(["walctl", *sys.argv[1:]])
        if os.path.basename(sys.argv[0]).startswith("walctl")
        else "walctl bench",
        "date": report.now_text(),
        "commit": report.git_commit(),
        "machine": report.machine(directory),
        "settings": s,
    }
    load = results["machine"]["loadavg_at_start"]
    say(f"walctl bench: files in {directory}; load average {load}")
    if load[0] > 0.5:
        say("walctl bench: the machine is busy (load > 0.5): the numbers will be noisy")
    return results


def _node_level(
    directory: str, s: dict, n: int, tag: str, system: str, command: list[str] | None
) -> dict:
    from walctl.bench import appends, report

    r = appends.run_walnode_level(
        directory,
        n,
        s["seconds"],
        s["warmup"],
        s["node_args"],
        tag=tag,
        command=command,
        reads_seconds=s["seconds"] / 2 if n == 1 else 0.0,
    )
    row = report.walnode_row(r, system)
    row["data_dir"] = os.path.join(directory, f"walnode-{n}{tag}")
    say(
        f"  {system:<8} {n:>5} in flight: {row['appends_per_sec']:>10,.0f}/s  "
        f"p50 {row['p50_us']} µs  p99 {row['p99_us']} µs  "
        f"{'verified' if r.verified else 'NOT VERIFIED: ' + r.verify_note}"
    )
    return row


def _zmq_row(s: dict) -> dict:
    """The bare ZeroMQ ipc round trip, a peer row (walctl/bench/reads.py)."""
    from walctl.bench import reads, report

    lat = reads.zmq_round_trips(s["seconds"] / 2)
    elapsed = sum(lat)
    say(f"  zmq ipc round trip: p50 {report.latency_fields(lat)['p50_us']} µs")
    return {
        "name": "zmq",
        "label": report.ZMQ_LABEL,
        "in_flight": 1,
        "appends": len(lat),
        "appends_per_sec": len(lat) / elapsed if elapsed else None,
        "latencies": lat,
        "note": "the floor of a read: this plus the client ceiling's read p50",
    }


def _peer_row(directory: str, s: dict, name: str, batch: int) -> dict:
    from walctl.bench import peers

    try:
        p = peers.run_peer(name, directory, s["seconds"], s["warmup"] / 2, batch)
    except Exception as err:  # a peer's failure is a row, not a crash
        p = peers.missing(name, batch)
        p["note"] = f"failed: {type(err).__name__}: {err}"
    rate = p["appends_per_sec"]
    say(f"  {name:<9} {batch:>5}: " + (f"{rate:>10,.0f}/s" if rate else p["note"]))
    return p


def _snapshot_comparison(directory: str, s: dict) -> dict:
    """The same level without and with snapshot+compact cycles, once per
    round, the two runs back to back; the ratio is taken inside each round
    and the median round is reported, with the spread of its ratio (a
    single pair moved between 1.3x and 2.1x on the same code, quiet)."""
    from walctl.bench import report, rounds

    n = s["snapshot_level"]
    sections = [_snapshot_pair(directory, s, n, _round_tag(i)) for i in range(s["rounds"])]
    snapshot = dict(rounds.median_item(sections, lambda x: x["p99_ratio"] or 0.0))
    snapshot["spread"] = rounds.spread([x["p99_ratio"] for x in sections])
    snapshot["spread_during"] = rounds.spread([x["p99_ratio_during"] for x in sections])
    snapshot["per_round"] = [
        {k: x[k] for k in ("p99_ratio", "p99_ratio_during", "cycles", "snapshot_ms_median")}
        | {"p99_without_us": x["without"]["p99_us"], "p99_with_us": x["with"]["p99_us"]}
        for x in sections
    ]
    snapshot["verified"] = all(x["verified"] for x in sections)
    say(
        f"  snapshot+compact at {n}: p99 ratio "
        f"{report.fmt_spread(snapshot['spread'])} over {len(sections)} rounds"
    )
    return snapshot


def _snapshot_pair(directory: str, s: dict, n: int, tag: str) -> dict:
    from walctl.bench import appends, report

    base_args = [*s["node_args"], "--no-auto-compact"]
    base = appends.run_walnode_level(
        directory, n, s["seconds"], s["warmup"], base_args, tag=f"-nosnap{tag}"
    )
    loaded = appends.run_walnode_level(
        directory,
        n,
        s["seconds"],
        s["warmup"],
        base_args,
        snapshot_every=s["snapshot_every"],
        tag=f"-snap{tag}",
    )
    snapshot = report.snapshot_section(base, loaded)
    say(
        f"  snapshot+compact at {n}: p99 {snapshot['without']['p99_us']} -> "
        f"{snapshot['with']['p99_us']} µs ({snapshot['cycles']} cycles)"
    )
    return snapshot


def _profiled_level(directory: str, s: dict, sampler, stacks_dir: str) -> dict:
    """The top level once more, under py-spy from the start of its window."""
    from walctl.bench import appends

    n = max(s["levels"])
    say(f"  profiling walnode at {n} in flight with py-spy (not in the table)")
    r = appends.run_walnode_level(
        directory,
        n,
        s["seconds"],
        s["warmup"],
        s["node_args"],
        on_window=sampler.start,
        tag="-prof",
    )
    return {
        "in_flight": n,
        "appends_per_sec_while_sampled": round(r.window_acks / r.seconds, 1),
        "cpu": r.cpu,
        "stacks_dir": os.path.abspath(stacks_dir),
        **sampler.finish(),
    }


def _write_files(args: argparse.Namespace, results: dict) -> None:
    """--json, --markdown and --png; before stdout: a closed stdout must not cost them."""
    from walctl.bench import report

    if args.json:
        from walctl.reportfile import write_json

        write_json(args.json, results)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.table(results, markdown=True) + "\n")
    if args.png:
        from walctl.bench import chart

        chart.write_png(results, args.png)


def _print_results(results: dict) -> None:
    from walctl.bench import report

    print(f"walctl bench, {results['date']}, {_machine_line(results['machine'])}")
    print(report.table(results))
    if "profile" in results:
        from walctl.bench import profile

        print()
        print(
            f"profile at {results['profile']['in_flight']} in flight (CPU share of a core: "
            f"{results['profile']['cpu']}):"
        )
        print(profile.text(results["profile"]))


def _machine_line(m: dict) -> str:
    fs = m.get("filesystem") or {}
    return (
        f"{m.get('cpus')} cpus ({m.get('cpu_model', '?')}), {m.get('memory_gib')} GiB, "
        f"{fs.get('type', '?')} on {fs.get('device', '?')}, kernel {m.get('kernel')}, "
        f"python {m.get('python')}"
    )
