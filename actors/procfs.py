"""What /proc says about processes: alive, parent, start time, command line, CPU time.

The one place walnode, its tools and tests read /proc (Linux), so that "is
it still running" and "is it that process's child" are answered the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/PID/stat that walnode's tools use."""

    state: str  # R, S, D, Z (zombie: dead, not yet reaped), ...
    ppid: int
    cpu_seconds: float  # utime + stime
    start_ticks: int  # when it started, in clock ticks since boot: with the pid, one process


def stat(pid: int) -> ProcStat | None:
    """`pid`'s stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command name may hold spaces and ")": split after its last ")"
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    return ProcStat(fields[0], int(fields[1]), cpu, int(fields[19]))  # fields from proc(5)'s 3rd


def pid_alive(pid: int) -> bool:
    """True if `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    return start_time(pid) is not None


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), or None if it does not
    run (a zombie counts as gone). A pid reused by another process has
    another start time."""
    st = stat(pid)
    return st.start_ticks if st is not None and st.state != "Z" else None


def cmdline(pid: int) -> list[str] | None:
    """`pid`'s argv, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except (FileNotFoundError, ProcessLookupError):
        return None


def children(pid: int) -> dict[int, list[str]]:
    """The live children of `pid` and their argv."""
    out: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = stat(int(entry))
        if st is None or st.state == "Z" or st.ppid != pid:
            continue
        argv = cmdline(int(entry))
        if argv is not None:  # None: it went away while we looked
            out[int(entry)] = argv
    return out


def is_child_running(pid: int, parent: int, module: str) -> bool:
    """`pid` is a live child of `parent` running `python -m module`."""
    st = stat(pid)
    if st is None or st.state == "Z" or st.ppid != parent:
        return False
    return module in (cmdline(pid) or [])
