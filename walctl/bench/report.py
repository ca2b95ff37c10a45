"""Percentiles, the results table, the ratios and the targets of issue #5."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time

from walctl.bench.appends import LevelResult

TARGET_RATE = 150_000  # durable acked appends/s at 1000 in flight (chart.py draws it too)
TARGET_SQLITE_RATIO = 20  # x sqlite3's commit rate
TARGET_P50_RATIO = 2  # one-at-a-time p50 <= 2x a bare write+fdatasync
TARGET_SNAPSHOT_P99_RATIO = 2  # p99 during snapshot+compaction <= 2x without


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


def walnode_row(r: LevelResult) -> dict:
    return {
        "system": "walnode",
        "label": "walnode (--fsync always)",
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


def _peer(peers: list[dict], name: str, in_flight: int | None = None) -> dict | None:
    for p in peers:
        if p["system"] == name and (in_flight is None or p["in_flight"] == in_flight):
            return p if p.get("appends_per_sec") else None
    return None


def _div(a, b) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def ratios(walnode: list[dict], peers: list[dict]) -> list[dict]:
    sqlite = _peer(peers, "sqlite")
    raw = _peer(peers, "raw")
    out = []
    for w in walnode:
        ceiling = _peer(peers, "ceiling", w["in_flight"])
        out.append(
            {
                "in_flight": w["in_flight"],
                "walnode_over_sqlite": _div(
                    w["appends_per_sec"], sqlite and sqlite["appends_per_sec"]
                ),
                "walnode_over_ceiling": _div(
                    w["appends_per_sec"], ceiling and ceiling["appends_per_sec"]
                ),
                "walnode_p50_over_raw_p50": _div(w["p50_us"], raw and raw["p50_us"]),
            }
        )
    return out


def targets(walnode: list[dict], peers: list[dict], snapshot: dict | None) -> list[dict]:
    by_level = {w["in_flight"]: w for w in walnode}
    sqlite = _peer(peers, "sqlite")
    raw = _peer(peers, "raw")
    out = []

    def add(name: str, measured, goal: str, met) -> None:
        out.append({"target": name, "measured": measured, "goal": goal, "met": met})

    top = by_level.get(1000)
    add(
        "durable acked appends/s at 1000 in flight",
        top and top["appends_per_sec"],
        f">= {TARGET_RATE:,}",
        None if top is None else top["appends_per_sec"] >= TARGET_RATE,
    )
    best = max(walnode, key=lambda w: w["appends_per_sec"], default=None)
    r = _div(best and best["appends_per_sec"], sqlite and sqlite["appends_per_sec"])
    add(
        "walnode's best rate / sqlite3's commit rate"
        + (f" (walnode at {best['in_flight']} in flight)" if best else ""),
        r,
        f">= {TARGET_SQLITE_RATIO}x",
        None if r is None else r >= TARGET_SQLITE_RATIO,
    )
    one = by_level.get(1)
    r = _div(one and one["p50_us"], raw and raw["p50_us"])
    add(
        "one-at-a-time p50 / raw write+fdatasync p50",
        r,
        f"<= {TARGET_P50_RATIO}x",
        None if r is None else r <= TARGET_P50_RATIO,
    )
    r = snapshot and snapshot["p99_ratio"]
    add(
        "append p99 with snapshot+compaction / without"
        + (f" ({snapshot['in_flight']} in flight)" if snapshot else ""),
        r,
        f"<= {TARGET_SNAPSHOT_P99_RATIO}x",
        None if r is None else r <= TARGET_SNAPSHOT_P99_RATIO,
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


def main_rows(results: dict) -> list[list[str]]:
    rows = []
    peers = sorted(results["peers"], key=lambda p: (p["system"] != "ceiling", p["in_flight"]))
    for r in results["walnode"] + peers:
        note = r.get("note") or ""
        if r["system"] == "walnode" and r.get("verified"):
            gc = r.get("group_commit") or {}
            note = f"verified; {gc.get('mean_batch', '-')} appends per fsync"
        rows.append(
            [
                r["label"],
                str(r["in_flight"]),
                _num(r["appends_per_sec"]),
                _num(r.get("p50_us")),
                _num(r.get("p99_us")),
                _num(r.get("p999_us")),
                note,
            ]
        )
    return rows


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
    header = ["in flight", "walnode / sqlite3", "walnode / ceiling", "walnode p50 / raw p50"]
    rows = [
        [
            str(r["in_flight"]),
            _num(r["walnode_over_sqlite"], 2),
            _num(r["walnode_over_ceiling"], 2),
            _num(r["walnode_p50_over_raw_p50"], 2),
        ]
        for r in results["ratios"]
    ]
    lines += _render(header, rows, markdown)
    s = results.get("snapshot")
    if s:
        lines.append("")
        lines.append(
            f"snapshot+compaction at {s['in_flight']} in flight, --no-auto-compact "
            f"({s['cycles']} cycles; median snapshot {s['snapshot_ms_median']} ms, "
            f"compact {s['compact_ms_median']} ms):"
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
        measured = "-" if m is None else _num(m, 0 if m >= 100 else 2) + ("" if m >= 100 else "x")
        item = f"{verdict}: {t['target']}: {measured} (goal {t['goal']})"
        lines.append(("- " + item) if markdown else item)
    return "\n".join(lines)
