"""A compaction's file work runs beside the appends, not in front of them.

The writer runs a wal_compact's file steps (the rewrite and its fsync, the
commit, the directory fsync) in a thread (actors/writer.py, CompactionRun).
WALNODE_HOLD_AT holds the rewrite's fsync (a slow disk at that step) while
the test appends; a kill -9 of the writer and an I/O error in the job are
driven through the same point.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.nodeproc import wait_until

FLAGS = ("--no-auto-compact", "--max-segment-bytes", "65536")
APPENDS_DURING = 20


def start(node_factory, data_dir: str, switch: str, **env: str):
    node = node_factory(
        "--data-dir",
        data_dir,
        *FLAGS,
        env={"WALNODE_HOLD_AT": f"compact.rewrite_fsync:{switch}", **env},
    )
    node.init()
    return node


def append(node, count: int, acked: list[str], timeout: float = 10) -> None:
    for _ in range(count):
        payload = f"set k{len(acked) % 5}=v{len(acked)}"
        body = node.call({"type": "wal_append", "payload": payload}, timeout=timeout)
        assert body["type"] == "wal_append_ok" and body["offset"] == len(acked), body
        acked.append(payload)


def held_compaction(node, data_dir: str, switch: str, acked: list[str]) -> tuple[int, int]:
    """Snapshot, then a wal_compact inside the active segment, held at its fsync;
    returns (its msg_id, its offset)."""
    append(node, 100, acked)
    snap = node.call({"type": "wal_snapshot"})
    assert snap["type"] == "wal_snapshot_ok", snap
    open(switch, "w").close()
    at = 50
    msg_id = node.send({"type": "wal_compact", "snapshot_at_offset": at})
    rewrite = os.path.join(data_dir, "wal", f"{at:020d}.log.tmp")
    assert wait_until(lambda: os.path.exists(rewrite), timeout=10), "the rewrite never started"
    return msg_id, at


def test_appends_are_answered_while_a_compaction_fsync_is_held(node_factory, data_dir, tmp_path):
    switch = os.fspath(tmp_path / "hold")
    node = start(node_factory, data_dir, switch)
    acked: list[str] = []
    msg_id, at = held_compaction(node, data_dir, switch, acked)
    append(node, APPENDS_DURING, acked, timeout=5)  # the rewrite's fsync is still held
    read = node.call({"type": "wal_read", "offset": 10})  # below the offset being dropped
    assert read["type"] == "wal_read_ok" and read["payload"] == acked[10], read
    assert not [m for m in node.unclaimed if m["body"].get("in_reply_to") == msg_id]
    # A wal_sync is a barrier for everything sent before it, the compaction too:
    # it, and what follows it, wait for the compaction's end (as every request
    # waited for every compaction before the job), in order.
    sync = node.send({"type": "wal_sync"})
    after = node.send({"type": "wal_append", "payload": "after the sync"})
    time.sleep(0.5)
    waiting = (msg_id, sync, after)
    assert not [m for m in node.unclaimed if m["body"].get("in_reply_to") in waiting]
    os.remove(switch)
    reply = node.reply_to(msg_id)["body"]
    assert reply["type"] == "wal_compact_ok", reply
    assert reply["entries_after"] == len(acked) - at, reply
    assert node.reply_to(sync)["body"]["type"] == "wal_sync_ok"
    assert node.reply_to(after)["body"]["offset"] == len(acked)
    acked.append("after the sync")
    append(node, 5, acked)
    info = node.call_ok({"type": "wal_info"})
    assert (info["first_offset"], info["next_offset"]) == (at, len(acked))
    scan = node.call_ok({"type": "wal_scan", "from_offset": at, "max_entries": 1000})
    assert [e["payload"] for e in scan["entries"]] == acked[at:]


@pytest.mark.parametrize("point", ["compact.rewrite_fsync", "compact.before_commit"])
def test_a_writer_killed_during_the_job_loses_nothing_acknowledged(
    node_factory, data_dir, tmp_path, point
):
    """Held at the rewrite's fsync the appends meanwhile are answered; held at
    the commit (after the switch) they are taken and wait. Either way a kill
    then loses none that was answered, and the log opens."""
    switch = os.fspath(tmp_path / "hold")
    node = node_factory(
        "--data-dir", data_dir, *FLAGS, env={"WALNODE_HOLD_AT": f"{point}:{switch}"}
    )
    node.init()
    acked: list[str] = []
    msg_id, at = held_compaction(node, data_dir, switch, acked)
    sent = {}
    for i in range(APPENDS_DURING):
        payload = f"during {i}"
        sent[node.send({"type": "wal_append", "payload": payload})] = payload
    bodies = {}
    if point == "compact.rewrite_fsync":
        for mid in sent:
            bodies[mid] = node.reply_to(mid, timeout=5)["body"]
            assert bodies[mid]["type"] == "wal_append_ok", bodies[mid]
    else:
        time.sleep(0.3)  # taken by the writer, not handled until the commit
    writer = node.pids()["writer"]
    os.remove(switch)  # the successor's compactions are not held
    os.kill(writer, signal.SIGKILL)
    reply = node.reply_to(msg_id)["body"]
    assert reply["type"] == "wal_compact_ok" or reply["code"] == 13, reply
    answered = {}
    for mid, payload in sent.items():
        body = bodies.get(mid) or node.reply_to(mid)["body"]
        if body["type"] == "wal_append_ok":
            answered[body["offset"]] = payload
        else:
            assert body["code"] == 13, body  # the writer died holding it: in doubt
    assert wait_until(lambda: node.restarted("writer", writer), timeout=15)
    assert wait_until(lambda: node.process("writer")["state"] == "ready", timeout=15)
    info = node.call_ok({"type": "wal_info"})
    assert info["first_offset"] in (0, at), info  # the compaction happened or not
    first = info["first_offset"]
    scan = node.call_ok({"type": "wal_scan", "from_offset": first, "max_entries": 1000})
    got = {e["offset"]: e["payload"] for e in scan["entries"]}
    assert [got.get(o) for o in range(first, len(acked))] == acked[first:]
    assert {o: got.get(o) for o in answered} == answered  # nothing answered was lost


def test_a_failed_fsync_in_the_job_is_an_error_not_a_success(node_factory, data_dir, tmp_path):
    switch = os.fspath(tmp_path / "eio")
    node = node_factory(
        "--data-dir", data_dir, *FLAGS, env={"WALNODE_FAULT_IO": f"fsync:EIO:{switch}"}
    )
    node.init()
    acked: list[str] = []
    append(node, 100, acked)
    assert node.call({"type": "wal_snapshot"})["type"] == "wal_snapshot_ok"
    writer = node.pids()["writer"]
    open(switch, "w").close()
    reply = node.call({"type": "wal_compact", "snapshot_at_offset": 50})
    os.remove(switch)
    assert reply["type"] == "error" and reply["code"] == 13, reply
    assert "nothing was compacted" in reply["text"], reply
    info = node.call_ok({"type": "wal_info"})
    assert (info["first_offset"], info["next_offset"]) == (0, len(acked)), info
    assert not [n for n in os.listdir(os.path.join(data_dir, "wal")) if n.endswith(".tmp")]
    append(node, 5, acked)  # the writer goes on: nothing it relies on failed
    assert node.pids()["writer"] == writer
