"""The PNG: throughput and latency per in-flight level (matplotlib, optional)."""

from __future__ import annotations

from walctl.bench import report

PEER_STYLE = {
    "sqlite": ("tab:red", "sqlite3 (WAL, FULL)"),
    "rocksdict": ("tab:purple", "rocksdict (sync)"),
    "lmdb": ("tab:brown", "lmdb (sync)"),
    "raw": ("tab:gray", "raw write+fdatasync"),
}


class ChartUnavailable(Exception):
    pass


def require():
    """matplotlib's pyplot on the Agg backend, or ChartUnavailable saying what to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ChartUnavailable(
            "the chart needs matplotlib: pip install 'walnode[chart]' (or drop --png)"
        ) from None
    return plt


def write_png(results: dict, path: str) -> None:
    plt = require()

    walnode = results["walnode"]
    levels = [w["in_flight"] for w in walnode]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))

    ax1.plot(
        levels, [w["appends_per_sec"] for w in walnode], "o-", color="tab:blue", label="walnode"
    )
    ceiling = sorted(
        (p for p in results["peers"] if p["system"] == "ceiling" and p["appends_per_sec"]),
        key=lambda p: p["in_flight"],
    )
    if ceiling:
        ax1.plot(
            [p["in_flight"] for p in ceiling],
            [p["appends_per_sec"] for p in ceiling],
            "s--",
            color="tab:green",
            label="ceiling (N records, 1 write+fdatasync)",
        )
    for p in results["peers"]:
        style = PEER_STYLE.get(p["system"])
        if style and p["appends_per_sec"]:
            ax1.axhline(
                p["appends_per_sec"],
                color=style[0],
                linestyle=":",
                label=style[1] + ", 1 at a time",
            )
    sqlite = next((p for p in results["peers"] if p["system"] == "sqlite"), None)
    if sqlite and sqlite["appends_per_sec"]:
        ax1.axhline(
            report.TARGET_SQLITE_RATIO * sqlite["appends_per_sec"],
            color="black",
            linestyle="-.",
            linewidth=0.8,
            label=f"target at {report.TARGET_LEVEL}: {report.TARGET_SQLITE_RATIO}x sqlite3",
        )
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("requests in flight")
    ax1.set_ylabel("durable appends / s")
    ax1.set_title("throughput")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7, loc="upper left")

    for key, style, color, name in (
        ("p50_us", "o-", "tab:blue", "p50"),
        ("p99_us", "^-", "tab:orange", "p99"),
        ("p999_us", "v-", "tab:red", "p99.9"),
    ):
        values = [w[key] / 1000 if w[key] else None for w in walnode]
        ax2.plot(levels, values, style, color=color, label=f"walnode {name}")
    raw = next((p for p in results["peers"] if p["system"] == "raw" and p.get("p50_us")), None)
    if raw:
        ax2.axhline(
            raw["p50_us"] / 1000, color="tab:gray", linestyle=":", label="raw write+fdatasync p50"
        )
    if ceiling:
        ax2.plot(
            [p["in_flight"] for p in ceiling],
            [p["p50_us"] / 1000 for p in ceiling],
            "s--",
            color="tab:green",
            label="ceiling batch p50",
        )
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("requests in flight")
    ax2.set_ylabel("latency, ms (write to reply)")
    ax2.set_title("walnode latency")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=7, loc="upper left")

    from matplotlib.ticker import NullLocator

    for ax in (ax1, ax2):
        ax.set_xticks(levels, [str(n) for n in levels])
        ax.xaxis.set_minor_locator(NullLocator())
    m = results.get("machine", {})
    fs = m.get("filesystem") or {}
    fig.suptitle(
        f"walnode bench {results.get('date', '')} · {m.get('cpus')} cpus, "
        f"{m.get('memory_gib')} GiB, {fs.get('type', '?')} · payload 100 B",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
