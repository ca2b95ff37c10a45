"""Data at rest (issue 10, items 5-7): snapshots that can be fallen back on,
bounded file descriptors, and acknowledged data that vanished named."""

from __future__ import annotations

import os
import resource

import pytest

from tests.damage import flip_byte
from tests.nodeproc import Node, wait_until


def pipelined_appends(node: Node, payloads: list[str]) -> list[dict]:
    """Send every append at once, then collect every reply (in msg_id order)."""
    ids = [node.send({"type": "wal_append", "payload": p}) for p in payloads]
    return [node.reply_to(i, timeout=200)["body"] for i in ids]


def info(node: Node) -> dict:
    return node.call_ok({"type": "wal_info"})


# -- 5. snapshots that can be fallen back on ---------------------------------------


def test_a_damaged_newest_snapshot_falls_back_to_an_older_one(node_factory, data_dir):
    flags = ("--data-dir", data_dir, "--snapshot-every", "200", "--keep-entries", "50")
    node = node_factory(*flags, "--max-segment-bytes", "1024")
    node.init()
    payloads = ["set early=1"] + [f"set k=v{i}" for i in range(1, 1000)]
    for end in range(200, 1001, 200):  # a snapshot every 200: at 200, 400, ... 1000
        batch = payloads[end - 200 : end]
        assert all(r["type"] == "wal_append_ok" for r in pipelined_appends(node, batch))
        assert wait_until(lambda e=end: info(node)["snapshot_offset"] == e, timeout=15)
    assert wait_until(lambda: info(node)["first_offset"] > 0, timeout=15), info(node)
    snaps = sorted(os.listdir(os.path.join(data_dir, "snapshots")))
    assert snaps == [f"{o:020d}.snap" for o in (600, 800, 1000)]  # --keep-snapshots 3
    # retention kept the log back to the oldest snapshot kept
    assert 0 < info(node)["first_offset"] <= 600
    assert node.close() == 0

    newest = os.path.join(data_dir, "snapshots", snaps[-1])
    flip_byte(newest, 30)
    node = node_factory(*flags)
    node.init()
    assert node.call_ok({"type": "kv_get", "key": "k"})["value"] == "v999"
    assert node.call_ok({"type": "kv_get", "key": "early"})["value"] == "1"  # from a snapshot
    assert node.status()["recoveries"]["compactor"]["snapshot_offset"] == 800
    assert os.path.exists(newest + ".corrupt")
    assert node.close() == 0


def test_keep_snapshots_below_one_is_refused(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir, "--keep-snapshots", "0")
    assert node.proc.wait(15) == 2
    assert "--keep-snapshots must be at least 1 (got 0)" in node.stderr_text()
    assert node.raw == []


# -- 6. bounded file descriptors ------------------------------------------------------


def limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.timeout(240)  # 3000 rolls, ~7 fsyncs each: ~10 s idle, minutes on a busy disk
def test_thousands_of_segments_under_ulimit_1024(node_factory, data_dir):
    flags = ("--data-dir", data_dir, "--max-segment-bytes", "64", "--no-auto-compact")
    flags += ("--request-timeout", "200")
    node = node_factory(*flags, preexec_fn=limit_fds)
    node.init()
    payloads = [f"entry-{i:06d}-{'x' * 20}" for i in range(3000)]  # one 41-byte record each
    replies = pipelined_appends(node, payloads)
    assert [r.get("offset") for r in replies] == list(range(3000)), replies[-1]
    assert info(node)["segments"] == 3000
    writer = node.process("writer")["pid"]
    assert open_fds(writer) < 100  # not two per sealed segment (that was 6000)
    assert node.close() == 0

    node = node_factory(*flags, preexec_fn=limit_fds)
    node.init()
    assert info(node)["next_offset"] == 3000
    for offset in (0, 1234, 2999):
        assert node.call_ok({"type": "wal_read", "offset": offset})["payload"] == payloads[offset]
    scanned = []
    while len(scanned) < 3000:
        body = node.call_ok({"type": "wal_scan", "from_offset": len(scanned), "max_entries": 1000})
        scanned += [e["payload"] for e in body["entries"]]
    assert scanned == payloads
    assert node.call_ok({"type": "wal_append", "payload": "set k=v"})["offset"] == 3000
    assert node.call_ok({"type": "kv_get", "key": "k"})["value"] == "v"  # the compactor too
    assert open_fds(node.process("writer")["pid"]) < 100
    assert node.close() == 0
