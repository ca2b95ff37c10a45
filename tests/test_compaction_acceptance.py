"""Compaction end to end: 1000 appends, a snapshot, a compaction at 500."""

from __future__ import annotations

import os


def test_1000_appends_snapshot_compact_at_500(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir, "--max-segment-bytes", "4096")
    node.init()
    payloads = [f"set key{i}=value-{i:04d}" for i in range(1000)]
    ids = [node.send({"type": "wal_append", "payload": p}) for p in payloads]
    assert [node.reply_to(i)["body"]["offset"] for i in ids] == list(range(1000))
    snap = node.call({"type": "wal_snapshot"})
    assert snap["snapshot_offset"] == 1000
    body = node.call({"type": "wal_compact", "snapshot_at_offset": 500})
    assert body["type"] == "wal_compact_ok"
    assert (body["entries_before"], body["entries_after"]) == (1000, 500)
    assert body["bytes_freed"] == sum(8 + len(p) for p in payloads[:500])
    assert node.call({"type": "wal_read", "offset": 499})["code"] == 20
    assert node.call({"type": "wal_read", "offset": 500})["payload"] == payloads[500]
    # no payload of offsets 0..499 is left in any file of the data directory
    blob = b""
    for root, _dirs, files in os.walk(data_dir):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                blob += f.read()
    assert [i for i in range(500) if payloads[i].encode() in blob] == []
    assert all(payloads[i].encode() in blob for i in range(500, 1000))

    before = {
        "info": node.call({"type": "wal_info"}),
        "segments": node.call({"type": "wal_segment_info"})["segments"],
        "kv": [node.call({"type": "kv_get", "key": f"key{i}"})["value"] for i in (0, 499, 999)],
    }
    assert before["kv"] == ["value-0000", "value-0499", "value-0999"]
    assert node.close() == 0

    node = node_factory("--data-dir", data_dir)
    node.init()
    info = node.call({"type": "wal_info"})
    for key in ("entries", "first_offset", "next_offset", "total_bytes", "snapshot_offset"):
        assert info[key] == before["info"][key], key
    assert node.call({"type": "wal_segment_info"})["segments"] == before["segments"]
    kv = [node.call({"type": "kv_get", "key": f"key{i}"})["value"] for i in (0, 499, 999)]
    assert kv == before["kv"]
    assert node.call({"type": "wal_append", "payload": "next"})["offset"] == 1000
