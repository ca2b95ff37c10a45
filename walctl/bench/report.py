"""Percentiles, the results table, the ratios and the performance targets."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time

from walctl.bench.appends import LevelResult

# The targets of issue #15, as ratios to peers measured in the same round.
TARGET_LEVEL = 1000  # the in-flight level of the rate and CPU targets
TARGET_SQLITE_RATIO = 60  # x sqlite3's one-at-a-time commit rate, at TARGET_LEVEL
TARGET_P50_RATIO = 1.0  # one-at-a-time append p50 <= 1x a bare write+fdatasync's
TARGET_SNAPSHOT_P99_RATIO = 1.5  # p99 during snapshot+compaction <= 1.5x without
TARGET_READ_RATIO = 1.5  # one-at-a-time read p50 <= 1.5x the pipe + ZeroMQ round trips
TARGET_CPU_US = 6.0  # µs of CPU per append in all walnode's processes, at TARGET_LEVEL
WALNODE_ROLES = ("front", "writer", "compactor", "supervisor")


def percentile(sorted_values, q: float) -> float | None:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    n = len(sorted_values)
    if not n:
        return None
    return sorted_values[min(n - 1, max(0, math.ceil(q * n) - 1))]


def latency_fields(latencies) -> dict:
    lat = sorted(latencies)

    def us(q: float) -> float | None:
        v = percentile(lat, q)
        return None if v is None else round(v * 1e6, 1)

    return {"samples": len(lat), "p50_us": us(0.50), "p99_us": us(0.99), "p999_us": us(0.999)}


def _group_commit(r: LevelResult) -> dict | None:
    before = r.info_before.get("group_commit")
    after = r.info_after.get("group_commit")
    if not before or not after:
        return None
    batches = after["batches"] - before["batches"]
    entries = after["entries"] - before["entries"]
    return {
        "fsyncs": batches,
        "mean_batch": round(entries / batches, 1) if batches else None,
        "fsync_p50_us": after.get("fsync_p50_us"),
        "fsync_p99_us": after.get("fsync_p99_us"),
    }


LABELS = {
    "walnode": "walnode (--fsync always)",
    "baseline": "baseline walnode (--baseline)",
    "null": "client ceiling: a node without a disk",
}
ZMQ_LABEL = "ZeroMQ ipc round trip (DEALER/ROUTER echo)"


def walnode_row(r: LevelResult, system: str = "walnode") -> dict:
    """A row of a node driven by the closed loop: walnode, the --baseline
    checkout's walnode, or the null node (walctl/bench/nullnode.py)."""
    return {
        "system": system,
        "label": LABELS[system],
        "in_flight": r.in_flight,
        "appends_per_sec": round(r.window_acks / r.seconds, 1),
        "appends": r.window_acks,
        **latency_fields(r.latencies),
        "acked_total": r.acked,
        "sent_total": r.sent,
        "errors": r.errors,
        "first_error": r.first_error,
        "verified": r.verified,
        "verify_note": r.verify_note,
        "wal_info": {k: r.info_after.get(k) for k in ("entries", "first_offset", "next_offset")},
        "group_commit": _group_commit(r),
        "cpu": r.cpu,
        # CPU time per acknowledged append, by process: what bounds the rate on 2 cores
        "cpu_us_per_append": {
            role: round(share * 1e6 / (r.window_acks / r.seconds), 1)
            for role, share in r.cpu.items()
            if r.window_acks
        },
        "note": "" if r.verified else "NOT VERIFIED: " + r.verify_note,
        "read_p50_us": latency_fields(r.read_latencies)["p50_us"],
    }


def peer_row(p: dict) -> dict:
    row = {k: v for k, v in p.items() if k != "latencies"}
    row["system"] = row.pop("name")
    if row["appends_per_sec"] is not None:
        row["appends_per_sec"] = round(row["appends_per_sec"], 1)
    row.update(latency_fields(p["latencies"]))
    return row


def snapshot_section(base: LevelResult, loaded: LevelResult) -> dict:
    """Append latency at one level without and with wal_snapshot+wal_compact
    cycles running; `during` is the appends sent while a cycle was open."""
    spans = [(c["start"], c["end"]) for c in loaded.control]
    during = [
        lat
        for lat, sent in zip(loaded.latencies, loaded.sent_times, strict=True)
        if any(a <= sent <= b for a, b in spans)
    ]
    without = latency_fields(base.latencies)
    with_ = latency_fields(loaded.latencies)
    during_f = latency_fields(during)
    ratio = with_["p99_us"] / without["p99_us"] if without["p99_us"] and with_["p99_us"] else None
    ratio_during = (
        during_f["p99_us"] / without["p99_us"] if without["p99_us"] and during_f["p99_us"] else None
    )
    return {
        "in_flight": base.in_flight,
        "without": {**without, "appends_per_sec": round(base.window_acks / base.seconds, 1)},
        "with": {**with_, "appends_per_sec": round(loaded.window_acks / loaded.seconds, 1)},
        "during_cycles": during_f,
        "cycles": len(spans),
        "cycle_time_s": round(sum(b - a for a, b in spans), 3),
        "snapshot_ms_median": _median_ms([c["snapshot_s"] for c in loaded.control]),
        "compact_ms_median": _median_ms([c["compact_s"] for c in loaded.control]),
        "entries_compacted": sum(c["entries_freed"] for c in loaded.control),
        "p99_ratio": round(ratio, 2) if ratio else None,
        "p99_ratio_during": round(ratio_during, 2) if ratio_during else None,
        "verified": base.verified and loaded.verified,
        "verify_note": f"without: {base.verify_note}; with: {loaded.verify_note}",
    }


def _median_ms(values: list[float]) -> float | None:
    v = sorted(values)
    return round(v[len(v) // 2] * 1000, 1) if v else None


def walnode_cpu_us(w: dict | None) -> float | None:
    """µs of CPU per acknowledged append in walnode's own processes (not the client)."""
    per = (w or {}).get("cpu_us_per_append") or {}
    got = [per[r] for r in WALNODE_ROLES if r in per]
    return round(sum(got), 1) if got else None


def targets(ratios: list[dict], walnode: list[dict], snapshot: dict | None) -> list[dict]:
    """Each target of issue #15 with its measured figure: a ratio's median over
    the rounds (its spread in `spread`)."""
    by_level = {r["in_flight"]: r for r in ratios}
    out = []

    def add(name: str, level: int, key: str, goal: str, ok) -> None:
        row = by_level.get(level) or {}
        measured = row.get(key)
        out.append(
            {
                "target": name,
                "measured": measured,
                "spread": (row.get("spread") or {}).get(key),
                "goal": goal,
                "met": None if measured is None else ok(measured),
            }
        )

    add(
        f"walnode / sqlite3 commit rate at {TARGET_LEVEL} in flight",
        TARGET_LEVEL,
        "walnode_over_sqlite",
        f">= {TARGET_SQLITE_RATIO}x",
        lambda v: v >= TARGET_SQLITE_RATIO,
    )
    add(
        "one-at-a-time p50 / raw write+fdatasync p50",
        1,
        "walnode_p50_over_raw_p50",
        f"<= {TARGET_P50_RATIO}x",
        lambda v: v <= TARGET_P50_RATIO,
    )
    add(
        "one-at-a-time read p50 / (pipe + ZeroMQ ipc round trip)",
        1,
        "walnode_read_p50_over_floor",
        f"<= {TARGET_READ_RATIO}x",
        lambda v: v <= TARGET_READ_RATIO,
    )
    cpu = walnode_cpu_us(next((w for w in walnode if w["in_flight"] == TARGET_LEVEL), None))
    out.append(
        {
            "target": f"µs CPU per append, walnode's processes, at {TARGET_LEVEL} in flight",
            "measured": cpu,
            "spread": None,
            "goal": f"<= {TARGET_CPU_US:g} µs",
            "met": None if cpu is None else cpu <= TARGET_CPU_US,
        }
    )
    # the median over rounds (with an odd count, the ratio of the round shown)
    r = (snapshot.get("spread") or {}).get("median") if snapshot else None
    out.append(
        {
            "target": "append p99 with snapshot+compaction / without"
            + (f" ({snapshot['in_flight']} in flight)" if snapshot else ""),
            "measured": r,
            "spread": snapshot.get("spread") if snapshot else None,
            "goal": f"<= {TARGET_SNAPSHOT_P99_RATIO}x",
            "met": None if r is None else r <= TARGET_SNAPSHOT_P99_RATIO,
        }
    )
    return out


def machine(directory: str) -> dict:
    """What the numbers were measured on."""
    info: dict = {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            info["memory_gib"] = round(kib / (1 << 20), 1)
    except (OSError, ValueError, IndexError):
        pass
    info["filesystem"] = filesystem_of(directory)
    return info


def filesystem_of(path: str) -> dict | None:
    path = os.path.realpath(path)
    best = None
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and (
                    best is None or len(mnt) > len(best["mount"])
                ):
                    best = {"device": dev, "mount": mnt, "type": fstype}
    except OSError:
        return None
    return best


def git_commit() -> str | None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout.strip()
    return out.stdout.strip() + ("+changes" if dirty else "")


def now_text() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


# -- text ------------------------------------------------------------------


def _num(v, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def _render(header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    """Aligned text columns (first column left, the rest right), or a markdown table."""
    if markdown:
        out = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---" if h == "note" else "---:" for h in header[1:]]) + "|",
        ]
        return out + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells).rstrip()

    return [line(header), "-" * len(line(header))] + [line(r) for r in rows]


def fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:,.2f}"


def fmt_spread(s: dict | None) -> str:
    """A ratio over rounds: median (min-max)."""
    if s is None:
        return "-"
    if s["rounds"] == 1:
        return fmt_ratio(s["median"])
    return f"{fmt_ratio(s['median'])} ({fmt_ratio(s['min'])}-{fmt_ratio(s['max'])})"


def _note(r: dict) -> str:
    note = r.get("note") or ""
    if r["system"] in ("walnode", "baseline") and r.get("verified"):
        gc = r.get("group_commit") or {}
        note = f"verified; {gc.get('mean_batch', '-')} appends per fsync"
    if r.get("read_p50_us") is not None:
        read = f"lone wal_read p50 {_num(r['read_p50_us'])} µs"
        note = f"{note}; {read}" if note else read
    if r.get("rounds", 1) > 1 and r.get("rate_min") is not None:
        rates = f"median of {r['rounds']} rounds, {_num(r['rate_min'])}-{_num(r['rate_max'])}/s"
        note = f"{note}; {rates}" if note else rates
    return note


def main_rows(results: dict) -> list[list[str]]:
    rows = []
    peers = sorted(results["peers"], key=lambda p: (p["system"] != "ceiling", p["in_flight"]))
    for r in results["walnode"] + results.get("baseline", []) + results.get("null", []) + peers:
        rows.append(
            [
                r["label"],
                str(r["in_flight"]),
                _num(r["appends_per_sec"]),
                _num(r.get("p50_us")),
                _num(r.get("p99_us")),
                _num(r.get("p999_us")),
                _note(r),
            ]
        )
    return rows


RATIO_COLUMNS = {
    "walnode_over_sqlite": "walnode / sqlite3",
    "walnode_over_ceiling": "walnode / ceiling",
    "walnode_over_null": "walnode / client ceiling",
    "walnode_over_baseline": "walnode / baseline",
    "walnode_p50_over_raw_p50": "walnode p50 / raw p50",
    "walnode_p50_over_sqlite_p50": "walnode p50 / sqlite3 p50",
    "walnode_read_p50_over_floor": "read p50 / (pipe + zmq)",
}


def ratio_lines(results: dict, markdown: bool) -> list[str]:
    """The ratios, each its median over the rounds with (min-max)."""
    ratios = results["ratios"]
    keys = [k for k in RATIO_COLUMNS if any(r.get(k) is not None for r in ratios)]
    header = ["in flight", *[RATIO_COLUMNS[k] for k in keys]]
    rows = [
        [str(r["in_flight"]), *[fmt_spread((r.get("spread") or {}).get(k)) for k in keys]]
        for r in ratios
    ]
    rounds = results.get("settings", {}).get("rounds", 1)
    title = (
        f"Ratios inside each round, median over {rounds} rounds (min-max):"
        if rounds > 1
        else "Ratios (one round):"
    )
    return [title, "", *_render(header, rows, markdown)]


def table(results: dict, markdown: bool = False) -> str:
    """The main table, the ratios, the snapshot comparison and the targets."""
    header = ["system", "in flight", "appends/s", "p50 µs", "p99 µs", "p99.9 µs", "note"]
    lines = _render(header, main_rows(results), markdown)
    lines.append("")
    roles = ["front", "writer", "compactor", "supervisor", "client"]
    header = ["in flight", *[f"{r} CPU" for r in roles], "total CPU", "µs CPU per append"]
    rows = []
    for w in results["walnode"]:
        cpu = w.get("cpu") or {}
        per = w.get("cpu_us_per_append") or {}
        rows.append(
            [str(w["in_flight"])]
            + [_num(cpu.get(r), 2) for r in roles]
            + [_num(sum(cpu.values()), 2), _num(sum(per.values()), 1)]
        )
    lines.append("CPU in cores (1.0 = one core busy) over the measured window:")
    lines.append("")
    lines += _render(header, rows, markdown)
    lines.append("")
    lines += ratio_lines(results, markdown)
    s = results.get("snapshot")
    if s:
        lines.append("")
        lines.append(
            f"snapshot+compaction at {s['in_flight']} in flight, --no-auto-compact "
            f"(the median of {(s.get('spread') or {}).get('rounds', 1)} rounds by its p99 ratio, "
            f"spread {fmt_spread(s.get('spread'))}, during a cycle "
            f"{fmt_spread(s.get('spread_during'))}; {s['cycles']} cycles; median snapshot "
            f"{s['snapshot_ms_median']} ms, compact {s['compact_ms_median']} ms):"
        )
        lines.append("")
        header = ["run", "appends/s", "p50 µs", "p99 µs", "p99.9 µs", "p99 / without"]
        rows = []
        for name, key, ratio in (
            ("without snapshots", "without", "1"),
            ("with snapshot+compact cycles", "with", _num(s["p99_ratio"], 2)),
            ("of which sent during a cycle", "during_cycles", _num(s["p99_ratio_during"], 2)),
        ):
            f = s[key]
            rows.append(
                [
                    name,
                    _num(f.get("appends_per_sec")),
                    _num(f["p50_us"]),
                    _num(f["p99_us"]),
                    _num(f["p999_us"]),
                    ratio,
                ]
            )
        lines += _render(header, rows, markdown)
    lines.append("")
    for t in results["targets"]:
        verdict = {True: "MET", False: "NOT MET", None: "not measured"}[t["met"]]
        m = t["measured"]
        measured = "-" if m is None else fmt_spread(t.get("spread") or {"median": m, "rounds": 1})
        item = f"{verdict}: {t['target']}: {measured} (goal {t['goal']})"
        lines.append(("- " + item) if markdown else item)
    return "\n".join(lines)
