"""Appends survive restarts; torn tails are cut; corruption stops the writer."""

from __future__ import annotations

import os

from tests.damage import cut_to_data


def segment_files(data_dir: str) -> list[str]:
    wal = os.path.join(data_dir, "wal")
    return sorted(os.path.join(wal, f) for f in os.listdir(wal) if f.endswith(".log"))


def test_2000_pipelined_appends_survive_restart(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir)
    node.init()
    ids = [node.send({"type": "wal_append", "payload": f"set k{i}={i}"}) for i in range(2000)]
    offsets = [node.reply_to(i)["body"]["offset"] for i in ids]
    assert offsets == list(range(2000))
    info = node.call({"type": "wal_info"})
    assert info["entries"] == 2000 and info["fsynced"] is True and info["next_offset"] == 2000
    assert node.close() == 0

    again = node_factory("--data-dir", data_dir)
    again.init()
    assert again.call({"type": "wal_info"})["entries"] == 2000
    offset = 0
    while offset < 2000:
        scan = again.call({"type": "wal_scan", "from_offset": offset, "max_entries": 700})
        for e in scan["entries"]:
            assert e == {"offset": offset, "payload": f"set k{offset}={offset}"}
            offset += 1
        assert scan["next_offset"] == offset
    for i in (0, 1, 999, 1999):
        body = again.call({"type": "wal_read", "offset": i})
        assert body["payload"] == f"set k{i}={i}" and body["checksum_valid"] is True
    assert again.call({"type": "wal_append", "payload": "after"})["offset"] == 2000
    assert again.close() == 0


def test_torn_tail_cut_at_every_byte_of_the_last_record(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir)
    node.init()
    for p in ("first", "second", "third!"):
        node.call({"type": "wal_append", "payload": p})
    assert node.close() == 0
    (seg,) = segment_files(data_dir)
    cut_to_data(seg)  # the preallocated zeros off: the file ends where the last record does
    with open(seg, "rb") as f:
        whole = f.read()
    last_len = 8 + len("third!")
    keep = len(whole) - last_len
    for cut in range(keep, len(whole)):  # every byte position inside the last record
        with open(seg, "wb") as f:
            f.write(whole[:cut])
        node = node_factory("--data-dir", data_dir)
        node.init()
        info = node.call({"type": "wal_info"})
        assert (info["entries"], info["total_bytes"]) == (2, keep), cut
        assert node.call({"type": "wal_read", "offset": 1})["payload"] == "second"
        assert node.call({"type": "wal_read", "offset": 2})["code"] == 20
        writer_recovery = node.call({"type": "status"})["recoveries"]["writer"]
        assert writer_recovery["bytes_truncated"] == cut - keep
        assert node.close() == 0
        assert os.path.getsize(seg) == keep
        assert "torn tail" in node.stderr_text() or cut == keep


def test_crc_failing_last_record_is_cut(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir)
    node.init()
    for p in ("a1", "a2", "a3"):
        node.call({"type": "wal_append", "payload": p})
    assert node.close() == 0
    (seg,) = segment_files(data_dir)
    cut_to_data(seg)  # the last byte of the file is the last record's
    with open(seg, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"X")
    node = node_factory("--data-dir", data_dir)
    node.init()
    assert node.call({"type": "wal_info"})["entries"] == 2
    assert node.call({"type": "wal_append", "payload": "a3 again"})["offset"] == 2
    assert "checksum mismatch" in node.stderr_text()


def test_corruption_mid_log_costs_one_record(node_factory, data_dir):
    # a rotted record that is not the tail is kept at its offset and reported:
    # the node starts and serves the rest (tests/test_rot.py has more)
    node = node_factory("--data-dir", data_dir)
    node.init()
    for p in ("b1", "b2", "b3"):
        node.call({"type": "wal_append", "payload": p})
    assert node.close() == 0
    (seg,) = segment_files(data_dir)
    with open(seg, "r+b") as f:
        f.seek(8)  # the first record's payload
        f.write(b"Z")
    node = node_factory("--data-dir", data_dir)
    node.init()
    assert node.call({"type": "wal_read", "offset": 0})["checksum_valid"] is False
    assert node.call({"type": "wal_read", "offset": 2})["payload"] == "b3"
    assert node.call({"type": "wal_append", "payload": "b4"})["offset"] == 3
    assert f"entry 0 fails its checksum ({os.path.basename(seg)} at byte 0)" in node.stderr_text()
    assert node.close() == 0
    with open(seg, "rb") as f:
        assert f.read(9)[8:9] == b"Z"  # nothing was "repaired" behind the user's back


def test_bit_rot_is_reported_on_read(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir)
    node.init()
    for p in ("c1", "c2", "c3"):
        node.call({"type": "wal_append", "payload": p})
    (seg,) = segment_files(data_dir)
    with open(seg, "r+b") as f:  # rot the middle record under the running writer
        f.seek(10 + 8)
        f.write(b"?")
    body = node.call({"type": "wal_read", "offset": 1})
    assert body["checksum_valid"] is False
    assert node.call({"type": "wal_read", "offset": 0})["checksum_valid"] is True
    assert node.call({"type": "wal_read", "offset": 2})["checksum_valid"] is True
