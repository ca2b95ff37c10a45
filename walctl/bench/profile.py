"""Where walnode's processes spend their time under load (py-spy, optional).

`walctl bench --profile DIR` runs one extra level (the highest) with py-spy
sampling the front, the writer and the compactor for the measured window
(`py-spy record --nonblocking`, so the targets are not paused). The raw
stacks land in DIR (`<role>.txt`, collapsed-stack format: feed them to
flamegraph.pl or speedscope), and the summary lists each process's top
functions by self time and by inclusive time. That run is not in the table.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys

RATE = 200  # samples per second
ROLES = ("front", "writer", "compactor")
FRAME_LINE = re.compile(r":\d+\)$")


class ProfilerUnavailable(Exception):
    pass


def find_py_spy() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    found = beside if os.path.exists(beside) else shutil.which("py-spy")
    if not found:
        raise ProfilerUnavailable("--profile needs py-spy: pip install py-spy")
    return found


class Sampler:
    """Starts py-spy on each role's pid when the measured window opens."""

    def __init__(self, out_dir: str, seconds: float) -> None:
        self.exe = find_py_spy()
        self.out_dir = out_dir
        self.seconds = seconds
        self.procs: dict[str, subprocess.Popen] = {}
        self.errors: dict[str, str] = {}
        os.makedirs(out_dir, exist_ok=True)

    def path(self, role: str) -> str:
        return os.path.join(self.out_dir, f"{role}.txt")

    def start(self, pids: dict[str, int]) -> None:
        for role in ROLES:
            if role not in pids:
                continue
            self.procs[role] = subprocess.Popen(
                [
                    self.exe,
                    "record",
                    "--pid",
                    str(pids[role]),
                    "--duration",
                    str(max(1, round(self.seconds))),
                    "--rate",
                    str(RATE),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    self.path(role),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )

    def finish(self) -> dict:
        summary = {}
        for role, proc in self.procs.items():
            try:
                _, err = proc.communicate(timeout=self.seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode != 0 or not os.path.exists(self.path(role)):
                self.errors[role] = err.decode(errors="replace").strip()[-500:]
                continue
            summary[role] = summarise(self.path(role), self.seconds)
        if self.errors:
            summary["errors"] = self.errors
        return summary


def summarise(path: str, seconds: float, top: int = 12) -> dict:
    """Top functions by self and inclusive samples from a collapsed-stack file."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [FRAME_LINE.sub(")", fr) for fr in stack.split(";")]
            frames = [fr for fr in frames if not fr.startswith("process ")]  # --pid label
            if not frames:
                continue
            total += n
            self_time[frames[-1]] += n
            for fr in set(frames):
                inclusive[fr] += n

    def share(counter) -> list[dict]:
        return [
            {"function": fn, "samples": n, "percent": round(100 * n / total, 1)}
            for fn, n in counter.most_common(top)
        ]

    return {
        "samples": total,
        # samples where the thread was not idle: CPU, but also blocking calls
        # py-spy does not know as idle (fdatasync shows up as Segment.sync)
        "active_fraction": round(total / (RATE * seconds), 2),
        "self": share(self_time),
        "inclusive": share(inclusive),
    }


def text(summary: dict, top: int = 8) -> str:
    lines = []
    for role in ROLES:
        s = summary.get(role)
        if not s:
            continue
        lines.append(
            f"{role}: {s['samples']} samples, active ~{s['active_fraction']:.0%} of the window "
            f"(CPU or blocking calls); top self time:"
        )
        for item in s["self"][:top]:
            lines.append(f"  {item['percent']:5.1f}%  {item['function']}")
    for role, err in summary.get("errors", {}).items():
        lines.append(f"{role}: py-spy failed: {err}")
    return "\n".join(lines)
