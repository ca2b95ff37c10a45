"""What two walnodes' replies to one session must share, and where they differ.

Equal after normalising: the multiset of reply lines of each run (each line
byte for byte, but for its own `msg_id` and the timing fields below), the
number of runs and each run's exit status. Each stream on its own: whole
JSON lines only, and reply msg_ids 0, 1, 2, ... in the order printed
(PROTOCOL.md: +1 for every message sent).

Normalised (they measure time or name processes, so two runs of one
binary differ): `status_ok`'s `pid`, `state` (a process may still be
starting at a barrier) and `last_seen_ms`; `last_recovery.duration_ms`;
`wal_info_ok.group_commit`'s `batches`, `mean_batch`, `fsync_p50_us`,
`fsync_p99_us` (how appends shared fsyncs depends on timing; its `entries`
is kept); `fsync_benchmark_ok`'s `ops_per_sec`. Left out: fields added since
the stored corpus (tests/differential_corpus.json.gz): the compactor's
recovery `store_offset` and `store_rebuilt`, the writer's `spare_pid`. The patterns only match a
key outside a string: replies are written with json.dumps's ASCII escapes,
so a quote inside a string is always `\\"`."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

_TIMING = re.compile(
    r'(?<!\\)"(pid|last_seen_ms|duration_ms|batches|mean_batch|fsync_p50_us|fsync_p99_us'
    r'|ops_per_sec)": (-?[0-9.eE+-]+|null)'
)
_STATE = re.compile(r'(?<!\\)"state": "[a-z]+"')
# the compactor's recovery fields main (no state store) lacks; store_rebuilt names a path
_STORE = re.compile(r', "store_offset": [0-9]+, "store_rebuilt": (null|"(?:[^"\\]|\\.)*")')
_SPARE = re.compile(r', "spare_pid": (null|[0-9]+)')
_MSG_ID = re.compile(r', "msg_id": (-?[0-9]+)\}\}$')
SHOWN = 12  # differences listed per kind


class Run(Protocol):
    exit_code: int | None
    lines: list[str]
    partial: str


def normalise(line: str, loose_recovery: bool = False) -> str:
    """`loose_recovery`: `status_ok`'s recovery reports dropped too (a branch that
    recovers differently, e.g. from a state store, reports other counts)."""
    line = _TIMING.sub(lambda m: f'"{m.group(1)}": 0', line)
    line = _STORE.sub("", line)
    line = _SPARE.sub("", line)
    line = _STATE.sub('"state": "*"', line)
    if loose_recovery and '"type": "status_ok"' in line:
        message = json.loads(line)
        message["body"].pop("last_recovery", None)
        message["body"].pop("recoveries", None)
        line = json.dumps(message)
    return line


def without_msg_id(line: str) -> tuple[str, int | None]:
    """The line with its reply msg_id cut out, and that msg_id (None if the
    line does not end in PROTOCOL.md's layout)."""
    found = _MSG_ID.search(line)
    if found is None:
        return line, None
    return line[: found.start()] + "}}", int(found.group(1))


def stream_problems(run: Run, label: str) -> list[str]:
    """What is wrong with one stream on its own."""
    problems = []
    if run.partial:
        problems.append(f"{label}: stdout ends in a cut line: {run.partial[:200]!r}")
    ids = []
    for i, line in enumerate(run.lines):
        if not _is_json_object(line):
            problems.append(f"{label}: line {i} is not one JSON object: {line[:200]!r}")
        ids.append(without_msg_id(line)[1])
    if ids != list(range(len(ids))):
        wrong = next(i for i, v in enumerate(ids) if v != i)
        problems.append(
            f"{label}: reply msg_ids are not 0, 1, 2, ... in order: line {wrong} has "
            f"{ids[wrong]} ({run.lines[wrong][:160]!r})"
        )
    return problems


def _is_json_object(line: str) -> bool:
    if not line.startswith('{"src": ') or not line.endswith("}}"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except RecursionError:
        return True  # deeper than json's recursion: an echoed deep src or msg_id
    except ValueError:
        return False


def differences(
    expected: Sequence[Run], actual: Sequence[Run], loose_recovery: bool = False
) -> list[str]:
    """Every way `actual` differs from `expected` (empty: the same answers)."""
    found: list[str] = []
    for label, runs in (("expected", expected), ("actual", actual)):
        for n, run in enumerate(runs):
            found += stream_problems(run, f"{label} run {n}")
    if len(expected) != len(actual):
        found.append(f"{len(expected)} runs expected, {len(actual)} happened")
    for n, (want, got) in enumerate(zip(expected, actual, strict=False)):
        if want.exit_code != got.exit_code:
            found.append(f"run {n}: exit status {got.exit_code}, expected {want.exit_code}")
        want_lines = Counter(without_msg_id(normalise(x, loose_recovery))[0] for x in want.lines)
        got_lines = Counter(without_msg_id(normalise(x, loose_recovery))[0] for x in got.lines)
        missing = list((want_lines - got_lines).elements())
        extra = list((got_lines - want_lines).elements())
        for line in missing[:SHOWN]:
            found.append(f"run {n}: missing reply {line[:400]}")
        for line in extra[:SHOWN]:
            found.append(f"run {n}: unexpected reply {line[:400]}")
        if len(missing) > SHOWN or len(extra) > SHOWN:
            found.append(f"run {n}: {len(missing)} replies missing, {len(extra)} unexpected")
    return found
