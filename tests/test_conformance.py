"""The course's test vectors, through the real process tree.

The vectors are a copy of the course's published sample cases
(tests/conformance/course/, README.md there says where they come from), so
a clone with nothing beside it runs every one of them.

Every expected line must appear in the output field by field, with the
exact byte layout (separators, key order); extra fields are allowed, as the
course allows them. Each case must finish well inside the course's 5 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.nodeproc import NODE, REPO

COURSE = os.path.join(REPO, "tests", "conformance", "course")
CASES = [
    ("task-10-1-1-wal-impl", 1),
    ("task-10-1-1-wal-impl", 2),
    ("task-10-1-2-wal-recovery", 1),
    ("task-10-1-2-wal-recovery", 2),
    ("task-10-1-3-segments", 1),
    ("task-10-1-3-segments", 2),
    ("task-10-1-4-compaction", 1),
    ("task-10-1-4-compaction", 2),
    ("task-10-1-5-fsync-bench", 1),
    ("task-10-1-5-fsync-bench", 2),
]


def run_case(task: str, n: int, tmp_path) -> tuple[list[str], float]:
    with open(os.path.join(COURSE, task, f"input-{n}.jsonl"), "rb") as f:
        data = f.read()
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, NODE],
        input=data,
        capture_output=True,
        timeout=20,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode().splitlines(), elapsed


def layout_matches(expected_line: str, actual_line: str) -> None:
    """Same separators and key order: the expected keys appear in the actual
    line in the same relative order, and the line is json.dumps' default."""
    actual = json.loads(actual_line)
    assert actual_line == json.dumps(actual), "not json.dumps' default layout"
    assert list(actual) == ["src", "dest", "body"]
    keys = list(actual["body"])
    assert keys[:2] == ["type", "in_reply_to"] and keys[-1] == "msg_id", keys
    exp_keys = list(json.loads(expected_line)["body"])
    assert [k for k in keys if k in exp_keys] == exp_keys


@pytest.mark.parametrize("task,n", CASES)
def test_course_vector(task, n, tmp_path):
    lines, elapsed = run_case(task, n, tmp_path)
    with open(os.path.join(COURSE, task, f"expected-{n}.txt")) as f:
        expected = [line for line in f.read().splitlines() if line.strip()]
    assert elapsed < 5.0, f"took {elapsed:.2f} s; the course allows 5 s per case"
    by_reply = {json.loads(line)["body"].get("in_reply_to"): line for line in lines}
    for exp_line in expected:
        exp = json.loads(exp_line)
        got_line = by_reply.get(exp["body"]["in_reply_to"])
        assert got_line is not None, f"no reply to {exp_line}\ngot: {lines}"
        got = json.loads(got_line)
        assert got["src"] == exp["src"] and got["dest"] == exp["dest"]
        for key, value in exp["body"].items():
            assert got["body"].get(key) == value, (key, exp_line, got_line)
        layout_matches(exp_line, got_line)
    bodies = [json.loads(line)["body"] for line in lines]
    if (task, n) == ("task-10-1-4-compaction", 1):
        (snap,) = [b for b in bodies if b["type"] == "wal_snapshot_ok"]
        assert snap["snapshot_offset"] >= 2 and snap["snapshot_size_bytes"] > 0
    if (task, n) == ("task-10-1-4-compaction", 2):  # documented difference: no invented numbers
        (err,) = [b for b in bodies if b["in_reply_to"] == 2]
        assert err["type"] == "error" and err["code"] == 22
        assert "no durable snapshot covers offset 500" in err["text"]
    if task == "task-10-1-5-fsync-bench":
        (bench,) = [b for b in bodies if b["type"] == "fsync_benchmark_ok"]
        results = bench["results"]
        if n == 1:  # three results, ops_per_sec strictly rising
            assert [r["strategy"] for r in results] == ["always", "batch_10ms", "none"]
            rates = [r["ops_per_sec"] for r in results]
            assert rates[0] < rates[1] < rates[2], rates
        else:
            assert [(r["strategy"], r["data_loss_window"]) for r in results] == [("always", "0ms")]
    if (task, n) == ("task-10-1-3-segments", 2):  # the README's extra check
        info = next(json.loads(ln)["body"] for ln in lines if "wal_segment_info_ok" in ln)
        assert any(s["sealed"] is False for s in info["segments"])
        assert info["active_segment"] == "00000000000000000000.log"


def test_every_vector_is_in_the_repository():
    """A lone clone carries every vector the cases above name."""
    for task, n in CASES:
        for name in (f"input-{n}.jsonl", f"expected-{n}.txt"):
            assert os.path.isfile(os.path.join(COURSE, task, name)), (task, name)
