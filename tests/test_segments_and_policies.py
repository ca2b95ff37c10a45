"""Segment rolling and its persisted setting; fsync policies; wal_scan; walctl."""

from __future__ import annotations

import json
import os

from tests.nodeproc import wait_until, walctl


def test_segments_roll_at_the_configured_size_and_the_setting_persists(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir)
    node.init()
    assert node.call({"type": "wal_segment_config", "max_segment_bytes": 1024}) == {
        "type": "wal_segment_config_ok",
        "in_reply_to": node.next_msg_id - 1,
        "max_segment_bytes": 1024,
        "msg_id": 1,
    }
    for i in range(100):  # 100 records of 8 + 42 bytes: 20 per 1024-byte segment
        node.call({"type": "wal_append", "payload": f"{i:042d}"})
    info = node.call({"type": "wal_segment_info"})
    segs = info["segments"]
    # a segment is sealed when the next record would pass the limit
    assert [s["start_offset"] for s in segs] == [0, 20, 40, 60, 80]
    assert all(s["entries"] == 20 and s["size_bytes"] == 1000 for s in segs)
    assert [s["sealed"] for s in segs] == [True, True, True, True, False]
    assert segs[0]["end_offset"] == 19 and segs[0]["file"] == "00000000000000000000.log"
    assert info["active_segment"] == "00000000000000000080.log"
    assert node.call({"type": "wal_info"})["segments"] == 5
    assert node.close() == 0

    node = node_factory("--data-dir", data_dir)
    node.init()
    for i in range(25):
        node.call({"type": "wal_append", "payload": f"{i:042d}"})
    segs = node.call({"type": "wal_segment_info"})["segments"]
    # the 1024-byte setting survived the restart
    assert [s["start_offset"] for s in segs] == [0, 20, 40, 60, 80, 100, 120]
    assert segs[-1]["entries"] == 5 and segs[-1]["end_offset"] == 124
    assert node.call({"type": "wal_read", "offset": 57})["payload"] == f"{57:042d}"
    assert node.call({"type": "wal_read", "offset": 119})["payload"] == f"{19:042d}"


def test_a_record_larger_than_the_limit_gets_a_segment_of_its_own(node_factory):
    node = node_factory("--max-segment-bytes", "100")
    node.init()
    node.call({"type": "wal_append", "payload": "small"})
    node.call({"type": "wal_append", "payload": "B" * 300})
    node.call({"type": "wal_append", "payload": "small again"})
    segs = node.call({"type": "wal_segment_info"})["segments"]
    assert [(s["start_offset"], s["entries"]) for s in segs] == [(0, 1), (1, 1), (2, 1)]
    assert segs[1]["size_bytes"] == 308


def test_interval_policy_tells_the_truth_and_wal_sync_forces_it(node_factory):
    node = node_factory("--fsync", "interval:60000ms")
    node.init()
    node.call({"type": "wal_append", "payload": "soon durable"})
    info = node.call({"type": "wal_info"})
    assert info["fsynced"] is False and info["fsync_policy"] == "interval:60000ms"
    assert node.call({"type": "wal_sync"})["durable_offset"] == 1
    assert node.call({"type": "wal_info"})["fsynced"] is True


def test_interval_policy_fsyncs_within_the_interval(node_factory):
    node = node_factory("--fsync", "interval:50ms")
    node.init()
    node.call({"type": "wal_append", "payload": "x"})
    # within the interval the writer owes an fsync; fails if it never pays it
    assert wait_until(lambda: node.call({"type": "wal_info"})["fsynced"] is True, timeout=2)


def test_never_policy(node_factory):
    node = node_factory("--fsync", "never")
    node.init()
    node.call({"type": "wal_append", "payload": "x"})
    info = node.call({"type": "wal_info"})
    assert info["fsync_policy"] == "never" and info["fsynced"] is False
    assert node.call({"type": "wal_sync"})["durable_offset"] == 1


def test_wal_info_reports_how_appends_shared_fsyncs(node_factory):
    node = node_factory()
    node.init()
    ids = [node.send({"type": "wal_append", "payload": f"set k{i}={i}"}) for i in range(500)]
    for msg_id in ids:
        assert node.reply_to(msg_id)["body"]["type"] == "wal_append_ok"
    stats = node.call_ok({"type": "wal_info"})["group_commit"]
    assert stats["entries"] == 500
    assert 1 <= stats["batches"] < 500, "pipelined appends must share fsyncs"
    assert stats["mean_batch"] == round(500 / stats["batches"], 2)
    assert 0 < stats["fsync_p50_us"] <= stats["fsync_p99_us"]
    never = node_factory("--fsync=never")
    never.init()
    never.call_ok({"type": "wal_append", "payload": "x"})
    assert never.call_ok({"type": "wal_info"})["group_commit"]["batches"] == 0


def test_bad_fsync_flag_is_refused_before_starting(node_factory):
    node = node_factory("--fsync", "sometimes")
    assert node.proc.wait(10) == 2
    assert "--fsync must be always, never or interval:MSms" in node.stderr_text()


def test_wal_scan_pages_and_caps(node_factory):
    node = node_factory()
    node.init()
    for i in range(30):
        node.call({"type": "wal_append", "payload": f"s{i}"})
    body = node.call({"type": "wal_scan", "from_offset": 5, "max_entries": 10})
    assert [e["offset"] for e in body["entries"]] == list(range(5, 15))
    assert body["entries"][0] == {"offset": 5, "payload": "s5"} and body["next_offset"] == 15
    body = node.call({"type": "wal_scan", "from_offset": 25})
    assert len(body["entries"]) == 5 and body["next_offset"] == 30
    assert node.call({"type": "wal_scan", "from_offset": 30}) == {
        "type": "wal_scan_ok",
        "in_reply_to": node.next_msg_id - 1,
        "entries": [],
        "next_offset": 30,
        "msg_id": body["msg_id"] + 1,
    }
    body = node.call({"type": "wal_scan", "from_offset": 0, "max_entries": 10**9})
    assert len(body["entries"]) == 30  # capped at 10,000, and only 30 exist


def test_walctl_info_and_dump_read_a_directory_offline(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir, "--max-segment-bytes", "64")
    node.init("n7")
    for i in range(6):
        node.call({"type": "wal_append", "payload": f"set k{i}={i}"})
    assert node.close() == 0
    out = walctl("info", data_dir)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["node_id"] == "n7" and info["entries"] == 6 and info["next_offset"] == 6
    # 16-byte records, 4 to a 64-byte segment
    assert info["max_segment_bytes"] == 64 and len(info["segments"]) == 2
    out = walctl("dump", data_dir, "--from", "4")
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e["offset"] for e in lines] == [4, 5]
    assert lines[0]["payload"] == "set k4=4" and lines[0]["checksum_valid"] is True
    assert len(lines[0]["checksum"]) == 8
    missing = walctl("info", os.path.join(data_dir, "nope"))
    assert missing.returncode == 2 and "not a walnode data directory" in missing.stderr


def test_walctl_reports_a_torn_tail_without_cutting_it(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir)
    node.init()
    node.call({"type": "wal_append", "payload": "whole"})
    assert node.close() == 0
    seg = os.path.join(data_dir, "wal", "00000000000000000000.log")
    size = os.path.getsize(seg)  # 13 record bytes, then preallocated zeros
    with open(seg, "r+b") as f:
        f.seek(13)
        f.write(b"\x09\x00\x00")
    info = json.loads(walctl("info", data_dir).stdout)
    assert info["entries"] == 1 and info["torn_tail"]["at_byte"] == 13
    assert info["torn_tail"]["bytes"] == size - 13  # the cut would take the zeros too
    assert info["total_bytes"] == info["segments"][0]["size_bytes"] == 13
    with open(seg, "rb") as f:  # untouched
        assert os.path.getsize(seg) == size and f.read(16)[13:] == b"\x09\x00\x00"


def test_fsync_benchmark_measures_on_a_scratch_file_and_removes_it(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir)
    node.init()
    node.call({"type": "wal_append", "payload": "keep me"})
    body = node.call({"type": "fsync_benchmark", "entries": 200, "strategies": ["none", "always"]})
    assert [r["strategy"] for r in body["results"]] == ["none", "always"]
    assert all(r["ops_per_sec"] > 0 for r in body["results"])
    assert body["results"][1]["durability"] == "every_write"
    assert not [n for n in os.listdir(data_dir) if n.startswith("fsync-benchmark")]
    info = node.call({"type": "wal_info"})  # the log itself was not touched
    assert (info["entries"], info["total_bytes"]) == (1, 8 + len("keep me"))
