"""A crash at every step of snapshot and compaction loses nothing acknowledged.

Each case runs walnode with WALNODE_CRASH_AT=<point> (the process SIGKILLs
itself there, as kill -9 would), drives appends, snapshots and a
compaction through the crash and the automatic restart, then starts a clean
walnode on the same directory and checks: every acknowledged entry that was
not compacted away reads back, the state equals a replay from the start of
every acknowledged append, no half-written file is left or loaded, and no
record below a committed compaction point is left in any file.
"""

from __future__ import annotations

import os

import pytest

from tests.nodeproc import wait_until
from wal.statemachine import replay

SNAPSHOT_POINTS = [
    "snapshot.before_temp",
    "snapshot.half_written",
    "snapshot.after_temp",
    "snapshot.after_rename",
    "snapshot.after_dir_fsync",
    "snapshot.pruning",
]
COMPACT_POINTS = [
    "compact.rewrite_half_written",
    "compact.before_commit",
    "compact.after_commit",
    "compact.after_rename",
    "compact.deleting",
]
CASES = [(p, "sealed") for p in SNAPSHOT_POINTS + COMPACT_POINTS] + [
    (p, "active") for p in COMPACT_POINTS
]
FLAGS = ("--max-segment-bytes", "512", "--no-auto-compact", "--keep-snapshots", "1")


def payload(i: int) -> str:
    return f"del k{i % 7}" if i % 11 == 10 else f"set k{i % 20}=v{i:04d}"


def append(node, acked: list[str], count: int) -> None:
    for _ in range(count):
        p = payload(len(acked))
        body = node.call({"type": "wal_append", "payload": p})
        assert body["type"] == "wal_append_ok", body
        assert body["offset"] == len(acked)
        acked.append(p)


def wait_ready(node, role: str) -> None:
    assert wait_until(lambda: node.process(role)["state"] == "ready", timeout=10), role


@pytest.mark.parametrize("point,where", CASES)
def test_crash_at_every_step(node_factory, data_dir, point, where):
    acked: list[str] = []
    node = node_factory("--data-dir", data_dir, *FLAGS, env={"WALNODE_CRASH_AT": point})
    node.init()
    append(node, acked, 140)
    pids = node.pids()
    snap = node.call({"type": "wal_snapshot"})
    if point == "snapshot.pruning":  # pruning happens when a second snapshot displaces the first
        assert snap["type"] == "wal_snapshot_ok"
        append(node, acked, 10)
        snap = node.call({"type": "wal_snapshot"})
    if point.startswith("snapshot."):
        assert snap["type"] == "error" and snap["code"] == 13, snap  # the compactor died
        assert wait_until(lambda: node.restarted("compactor", pids["compactor"]), timeout=10)
    else:
        assert snap["type"] == "wal_snapshot_ok" and snap["snapshot_offset"] == 140
    segs = node.call({"type": "wal_segment_info"})["segments"]
    target = segs[2] if where == "sealed" else segs[-1]
    assert target["sealed"] == (where == "sealed") and target["entries"] >= 3
    at = target["start_offset"] + 2  # inside the segment: it must be rewritten
    compact = node.call({"type": "wal_compact", "snapshot_at_offset": at})
    if point.startswith("compact."):
        assert compact["type"] == "error" and compact["code"] == 13, compact  # the writer died
        assert wait_until(lambda: node.restarted("writer", pids["writer"]), timeout=10)
    wait_ready(node, "compactor")
    append(node, acked, 20)  # the log goes on at the next offset after any crash
    assert node.close() == 0

    node = node_factory("--data-dir", data_dir, *FLAGS)
    node.init()
    info = node.call({"type": "wal_info"})
    assert info["next_offset"] == len(acked)
    first = info["first_offset"]
    assert first in (0, at)
    if compact["type"] == "wal_compact_ok":
        assert first == at
    for offset in range(first, len(acked)):
        body = node.call({"type": "wal_read", "offset": offset})
        assert (body["payload"], body["checksum_valid"]) == (acked[offset], True), offset
    _, _, state = replay([(p, True) for p in acked])
    for key in {f"k{i}" for i in range(20)}:
        body = node.call({"type": "kv_get", "key": key})
        if key in state:
            assert body.get("value") == state[key], (key, body)
        else:
            assert body["code"] == 20, (key, body)
    leftovers = [
        name
        for sub in ("wal", "snapshots")
        for name in os.listdir(os.path.join(data_dir, sub))
        if name.endswith(".tmp")
    ]
    assert leftovers == []
    if first:
        blob = b"".join(
            open(os.path.join(data_dir, "wal", name), "rb").read()
            for name in os.listdir(os.path.join(data_dir, "wal"))
        )
        # the set payloads are unique (del payloads repeat, so they cannot tell)
        below = [i for i in range(first) if acked[i].startswith("set")]
        assert below and not [i for i in below if acked[i].encode() in blob]
    # and compaction works again on the recovered directory
    snap = node.call({"type": "wal_snapshot"})
    assert snap["snapshot_offset"] == len(acked)
    body = node.call({"type": "wal_compact", "snapshot_at_offset": at})
    assert body["type"] == "wal_compact_ok"
    assert node.call({"type": "wal_info"})["first_offset"] == at
