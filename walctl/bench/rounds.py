"""Several short rounds, alternating, and ratios that hold still.

A peer's rate moves by half between runs on a shared machine (sqlite3:
4.0k-6.7k/s here), so a ratio of two numbers taken minutes apart says little.
`walctl bench --rounds R` measures every system once per round, walnode and
its peers one after the other, and computes each ratio inside its round;
what is reported is each ratio's median over the rounds with its spread
(min-max). A system's row in the main table is its median round (by rate).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

# ratio name -> (numerator system, its field, denominator system, its field,
#               the denominator's in-flight level: None = the walnode row's own, 1 = one at a time)
RATIOS: dict[str, tuple[str, str, str, str, int | None]] = {
    "walnode_over_sqlite": ("walnode", "appends_per_sec", "sqlite", "appends_per_sec", 1),
    "walnode_over_ceiling": ("walnode", "appends_per_sec", "ceiling", "appends_per_sec", None),
    "walnode_over_null": ("walnode", "appends_per_sec", "null", "appends_per_sec", None),
    "walnode_over_baseline": ("walnode", "appends_per_sec", "baseline", "appends_per_sec", None),
    "walnode_p50_over_raw_p50": ("walnode", "p50_us", "raw", "p50_us", 1),
    "walnode_p50_over_sqlite_p50": ("walnode", "p50_us", "sqlite", "p50_us", 1),
}


def _rows_of(one_round: dict, system: str) -> list[dict]:
    if system in ("walnode", "null", "baseline"):
        return one_round.get(system) or []
    return [p for p in one_round["peers"] if p["system"] == system]


def _value(rows: list[dict], in_flight: int, field: str) -> float | None:
    for r in rows:
        if r["in_flight"] == in_flight and r.get("appends_per_sec"):
            return r.get(field)
    return None


def round_ratios(one_round: dict, levels: list[int]) -> dict[int, dict[str, float | None]]:
    """Every ratio of RATIOS inside one round, by walnode's in-flight level,
    and at 1 in flight the read's: its p50 over the two bare round trips'."""
    out: dict[int, dict[str, float | None]] = {}
    for n in levels:
        out[n] = {}
        for name, (num, num_field, den, den_field, den_level) in RATIOS.items():
            a = _value(_rows_of(one_round, num), n, num_field)
            b = _value(_rows_of(one_round, den), den_level or n, den_field)
            out[n][name] = _ratio(a, b)
        read = _value(one_round.get("walnode") or [], n, "read_p50_us")
        pipe = _value(one_round.get("null") or [], n, "read_p50_us")
        zmq_rtt = _value(_rows_of(one_round, "zmq"), 1, "p50_us")
        floor = pipe + zmq_rtt if pipe is not None and zmq_rtt is not None else None
        out[n]["walnode_read_p50_over_floor"] = _ratio(read, floor) if n == 1 else None
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def spread(values: list[float | None]) -> dict | None:
    """Median, min and max of the values measured (None if none were)."""
    got = [v for v in values if v is not None]
    if not got:
        return None
    return {
        "median": round(statistics.median(got), 2),
        "min": round(min(got), 2),
        "max": round(max(got), 2),
        "rounds": len(got),
    }


def ratios(rounds: list[dict], levels: list[int]) -> list[dict]:
    """Per level: each ratio's median (under its own name, as one run reported
    it before) and, under `spread`, its median/min/max over the rounds."""
    per_round = [round_ratios(r, levels) for r in rounds]
    out = []
    for n in levels:
        row: dict = {"in_flight": n, "spread": {}}
        for name in [*RATIOS, "walnode_read_p50_over_floor"]:
            s = spread([pr[n][name] for pr in per_round])
            row[name] = s and s["median"]
            row["spread"][name] = s
        out.append(row)
    return out


def median_rows(rounds: list[dict], key: str) -> list[dict]:
    """One row per (system, level): the round with the median rate, with the
    rate's min and max over the rounds beside it."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rounds:
        for row in r.get(key) or []:
            groups.setdefault((row["system"], row["in_flight"]), []).append(row)
    out = []
    for rows in groups.values():
        measured = sorted((r for r in rows if r.get("appends_per_sec")), key=_rate)
        if not measured:
            out.append({**rows[0], "rounds": len(rows)})
            continue
        middle = dict(median_item(measured, _rate))
        middle["rate_min"] = _rate(measured[0])
        middle["rate_max"] = _rate(measured[-1])
        middle["rounds"] = len(measured)
        out.append(middle)
    return out


def median_item(items: list[dict], key: Callable[[dict], float]) -> dict:
    """The item with the median `key` (the lower of the two middle ones)."""
    ranked = sorted(items, key=key)
    return ranked[(len(ranked) - 1) // 2]


def _rate(row: dict) -> float:
    return row["appends_per_sec"]
