"""Data at rest (issue 10, items 5-7): snapshots that can be fallen back on,
bounded file descriptors, and acknowledged data that vanished named."""

from __future__ import annotations

import json
import os
import resource
import shutil

import pytest

from actors.codes import Code
from tests.damage import flip_byte
from tests.nodeproc import Node, wait_until, walctl


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
    # wal_info's snapshot_offset is the writer's listing of the directory: it shows 1000 once
    # the file is renamed in, before the compactor's fsync of the directory and its pruning
    snaps = [f"{o:020d}.snap" for o in (600, 800, 1000)]  # --keep-snapshots 3
    listed = lambda: sorted(os.listdir(os.path.join(data_dir, "snapshots")))  # noqa: E731
    assert wait_until(lambda: listed() == snaps, timeout=15), listed()
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
    err = node.stderr_text()
    assert "argument --keep-snapshots: must be at least 1" in err, err
    assert "with none the state is lost" in err and "got 0" in err, err
    assert node.raw == []


# -- 6. bounded file descriptors ------------------------------------------------------


def limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


SEGMENTS = 1200  # past the 1024 fds allowed: even one fd per segment would run out


@pytest.mark.timeout(240)  # 1200 rolls, ~4 syncs each: ~5 s idle, minutes on a busy disk
def test_thousands_of_segments_under_ulimit_1024(node_factory, data_dir):
    flags = ("--data-dir", data_dir, "--max-segment-bytes", "64", "--no-auto-compact")
    flags += ("--request-timeout", "200")
    node = node_factory(*flags, preexec_fn=limit_fds)
    node.init()
    payloads = [f"entry-{i:06d}-{'x' * 20}" for i in range(SEGMENTS)]  # a 41-byte record each
    replies = pipelined_appends(node, payloads)
    assert [r.get("offset") for r in replies] == list(range(SEGMENTS)), replies[-1]
    assert info(node)["segments"] == SEGMENTS
    writer = node.process("writer")["pid"]
    assert open_fds(writer) < 100  # not two per sealed segment (that was twice SEGMENTS)
    assert node.close() == 0

    node = node_factory(*flags, preexec_fn=limit_fds)
    node.init()
    assert info(node)["next_offset"] == SEGMENTS
    for offset in (0, 567, SEGMENTS - 1):
        assert node.call_ok({"type": "wal_read", "offset": offset})["payload"] == payloads[offset]
    scanned = []
    while len(scanned) < SEGMENTS:
        body = node.call_ok({"type": "wal_scan", "from_offset": len(scanned), "max_entries": 1000})
        scanned += [e["payload"] for e in body["entries"]]
    assert scanned == payloads
    assert node.call_ok({"type": "wal_append", "payload": "set k=v"})["offset"] == SEGMENTS
    assert node.call_ok({"type": "kv_get", "key": "k"})["value"] == "v"  # the compactor too
    assert open_fds(node.process("writer")["pid"]) < 100
    assert node.close() == 0


# -- 7. acknowledged data that vanished is named ----------------------------------------

SEGMENT = "200"  # 19-byte records: 10 per segment, bases 0, 10, ..., 50


def fill(node_factory, data_dir: str, n: int = 60) -> None:
    node = node_factory("--data-dir", data_dir, "--max-segment-bytes", SEGMENT)
    node.init()
    replies = pipelined_appends(node, [f"set k{i:02d}=v{i:02d}" for i in range(n)])
    assert [r["offset"] for r in replies] == list(range(n))
    assert node.close() == 0


def seg(data_dir: str, base: int) -> str:
    return os.path.join(data_dir, "wal", f"{base:020d}.log")


def refused(node_factory, data_dir: str) -> str:
    """Start walnode on data_dir; it must exit with nothing answered. Its stderr."""
    node = node_factory("--data-dir", data_dir)
    node.send({"type": "init", "node_id": "n1", "node_ids": ["n1"]})
    assert node.proc.wait(20) != 0
    assert node.raw == []
    return node.stderr_text()


def test_a_deleted_newest_segment_refuses_the_start_naming_it(node_factory, data_dir):
    fill(node_factory, data_dir)
    os.remove(seg(data_dir, 50))
    os.remove(os.path.join(data_dir, "wal", f"{40:020d}.idx"))  # as if 40 were the newest
    err = refused(node_factory, data_dir)
    assert f"acknowledged data is missing: {seg(data_dir, 50)}" in err
    assert "reached_segment 50" in err
    out = walctl("verify", data_dir)
    assert out.returncode == 3 and seg(data_dir, 50) in out.stdout
    fix = walctl("repair", data_dir, "--yes")
    assert fix.returncode == 3 and "cannot repair" in fix.stdout  # it would reuse offsets
    assert not os.path.exists(seg(data_dir, 50))


def test_a_deleted_middle_segment_refuses_the_start_naming_the_entries(node_factory, data_dir):
    fill(node_factory, data_dir)
    os.remove(seg(data_dir, 20))
    err = refused(node_factory, data_dir)
    assert "entries 20 to 29 are gone" in err and seg(data_dir, 30) in err
    # repair keeps every offset: the lost ones become markers in a new file
    assert walctl("repair", data_dir, "--yes").returncode == 0
    node = node_factory("--data-dir", data_dir)
    node.init()
    lost = node.call({"type": "wal_read", "offset": 25})
    assert lost["code"] == 20 and lost["lost"] is True and "missing" in lost["text"]
    assert node.call_ok({"type": "wal_read", "offset": 30})["payload"] == "set k30=v30"
    assert node.call_ok({"type": "wal_append", "payload": "x"})["offset"] == 60
    assert node.close() == 0


def test_a_bad_log_start_names_the_file_and_value(node_factory, data_dir):
    fill(node_factory, data_dir)
    log_start = os.path.join(data_dir, "wal", "LOG_START")
    with open(log_start, "wb") as f:
        f.write(b"12x\n")
    err = refused(node_factory, data_dir)
    assert f"corruption in {log_start}: it holds b'12x\\n', not an offset" in err
    out = walctl("verify", data_dir)
    assert out.returncode == 3 and log_start in out.stdout
    assert walctl("repair", data_dir, "--yes").returncode == 0
    with open(log_start, "rb") as f:
        assert f.read() == b"0\n"  # where the first segment starts
    assert walctl("verify", data_dir).returncode == 0
    node = node_factory("--data-dir", data_dir)
    node.init()
    assert node.call_ok({"type": "wal_read", "offset": 0})["payload"] == "set k00=v00"
    assert node.close() == 0


def test_a_bad_meta_value_names_the_file_field_and_value(node_factory, data_dir):
    fill(node_factory, data_dir)
    meta_path = os.path.join(data_dir, "walnode.meta")
    with open(meta_path) as f:
        meta = json.load(f)
    assert meta["reached_segment"] == 50 and meta["max_segment_bytes"] == 200
    meta["max_segment_bytes"] = "abc"
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    err = refused(node_factory, data_dir)
    assert f"corruption in {meta_path}: max_segment_bytes is 'abc', not an integer" in err
    out = walctl("verify", data_dir)
    assert out.returncode == 3 and "max_segment_bytes is 'abc'" in out.stdout
    assert walctl("repair", data_dir, "--yes").returncode == 0
    with open(meta_path) as f:
        repaired = json.load(f)
    assert "max_segment_bytes" not in repaired and repaired["node_id"] == "n1"
    node = node_factory("--data-dir", data_dir)
    node.init()
    assert node.call_ok({"type": "wal_append", "payload": "a"})["offset"] == 60
    assert node.call_ok({"type": "wal_append", "payload": "b"})["offset"] == 61
    assert node.close() == 0


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_data_directory_gone_under_a_running_writer(node_factory, data_dir, how):
    node = node_factory("--data-dir", data_dir)
    node.init()
    assert node.call_ok({"type": "wal_append", "payload": "before"})["offset"] == 0
    if how == "deleted":
        shutil.rmtree(data_dir)
    else:
        os.rename(data_dir, data_dir + ".old")
        os.mkdir(data_dir)
    ids = {node.send({"type": "wal_append", "payload": f"after-{i}"}) for i in range(20)}
    assert node.proc.wait(20) != 0  # the node stopped: it cannot serve that directory
    node.close()
    replies = [r["body"] for r in node.remaining() if r["body"].get("in_reply_to") in ids]
    assert [r for r in replies if r["type"] == "wal_append_ok"] == []  # none acknowledged
    assert {r["code"] for r in replies} <= {Code.CRASH, Code.TEMPORARILY_UNAVAILABLE}
    assert "acknowledged data is missing" in node.stderr_text()
