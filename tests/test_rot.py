"""One rotted record costs one record, never the node (issue 10, item 4).

A record that fails its CRC is kept at its offset and read back with
`checksum_valid: false`; reads, scans, appends and kv_get go on; kv_get
names the damaged offset for every key it could have changed; a snapshot
carries the damaged offsets; `walctl repair` replaces the record with a
lost-record marker at the same offset, so nothing after it moves.
"""

from __future__ import annotations

import os
import shutil

from tests.damage import flip_byte
from tests.nodeproc import walctl
from wal.record import HEADER_SIZE

SEGMENT = "200"  # 19-byte records (11-byte payloads): 10 per segment
RECORD = 19
N = 60


def payload(i: int) -> str:
    return f"set k{i:02d}=v{i:02d}"


def seg(data_dir: str, base: int) -> str:
    return os.path.join(data_dir, "wal", f"{base:020d}.log")


def fill(node_factory, data_dir: str, n: int = N) -> None:
    node = node_factory("--data-dir", data_dir, "--max-segment-bytes", SEGMENT, "--no-auto-compact")
    node.init()
    for i in range(n):
        assert node.call_ok({"type": "wal_append", "payload": payload(i)})["offset"] == i
    assert node.close() == 0
    # the graceful stop committed the state store and snapshotted the state;
    # without them, the next start replays the log, meeting the damage these
    # tests put in it
    snapshots = os.path.join(data_dir, "snapshots")
    for name in os.listdir(snapshots):
        os.remove(os.path.join(snapshots, name))
    shutil.rmtree(os.path.join(data_dir, "state"))


def start(node_factory, data_dir: str):
    node = node_factory("--data-dir", data_dir, "--no-auto-compact")
    node.init()
    return node


def assert_every_entry_in_place(node, n: int, lost: set[int], extra: dict[int, str]) -> None:
    """Every offset below n holds its original payload, except the lost ones."""
    entries = []
    while len(entries) < n:
        body = node.call_ok({"type": "wal_scan", "from_offset": len(entries), "max_entries": 100})
        entries += body["entries"]
    for i, e in enumerate(entries):
        assert e["offset"] == i
        if i in lost:
            assert e["checksum_valid"] is False
        else:
            assert e["payload"] == extra.get(i, payload(i)) and "checksum_valid" not in e, e


def kv(node, key: str) -> dict:
    return node.call({"type": "kv_get", "key": key})


def test_flipped_byte_in_a_sealed_segment_costs_one_record(node_factory, data_dir):
    fill(node_factory, data_dir)
    first = seg(data_dir, 0)
    size = os.path.getsize(first)
    flip_byte(first, 3 * RECORD + HEADER_SIZE + 5)  # a payload byte of offset 3

    node = start(node_factory, data_dir)
    assert node.call_ok({"type": "wal_read", "offset": 3})["checksum_valid"] is False
    body = node.call_ok({"type": "wal_read", "offset": 50})
    assert (body["payload"], body["checksum_valid"]) == (payload(50), True)
    assert_every_entry_in_place(node, N, {3}, {})
    # the state machine: a key set after the damage is certain, one before is not
    assert kv(node, "k50")["value"] == "v50"
    refused = kv(node, "k01")
    assert refused["type"] == "error" and refused["code"] == 22
    assert refused["damaged_offsets"] == [3] and "entry 3" in refused["text"]
    # reported with file, byte and offset (by the compactor, which met it replaying)
    assert f"entry 3 cannot be read ({first} at byte {3 * RECORD}" in node.stderr_text()
    assert node.call_ok({"type": "wal_append", "payload": "set k01=again"})["offset"] == N
    assert kv(node, "k01")["value"] == "again"  # set after the damage: certain again
    assert node.close() == 0

    out = walctl("verify", data_dir)
    assert out.returncode == 3
    assert f"CORRUPT: {first} at byte {3 * RECORD}: record checksum mismatch; entry 3" in out.stdout
    done = walctl("repair", data_dir, "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"overwrite bytes {3 * RECORD} to {4 * RECORD} of {first}" in done.stdout
    assert os.path.getsize(first) == size  # nothing moved, nothing cut
    assert os.path.exists(os.path.join(data_dir, "wal", f"{0:020d}.idx"))  # still true
    out = walctl("verify", data_dir)
    assert out.returncode == 0
    assert "lost entries (marked by an earlier walctl repair): [3]" in out.stdout

    node = start(node_factory, data_dir)
    lost = node.call({"type": "wal_read", "offset": 3})
    assert (lost["type"], lost["code"], lost["lost"]) == ("error", 20, True)
    assert "entry 3 is lost" in lost["text"] and "walctl repair" in lost["text"]
    assert_every_entry_in_place(node, N + 1, {3}, {N: "set k01=again"})
    assert node.call_ok({"type": "wal_append", "payload": "after"})["offset"] == N + 1
    assert kv(node, "k50")["value"] == "v50"
    assert kv(node, "k02")["damaged_offsets"] == [3]  # the marker is damage too
    assert node.close() == 0


def test_damaged_length_field_in_a_sealed_segment_costs_one_record(node_factory, data_dir):
    # the probe: with the length flipped, following the log by its
    # headers lost its place ("entry 12 is not in .../wal"); the index keeps it
    fill(node_factory, data_dir)
    first = seg(data_dir, 0)
    flip_byte(first, 2 * RECORD, 0x40)  # offset 2's length: 11 -> 75

    node = start(node_factory, data_dir)
    assert node.call_ok({"type": "wal_read", "offset": 2})["checksum_valid"] is False
    assert node.call_ok({"type": "wal_read", "offset": 3})["payload"] == payload(3)
    assert kv(node, "k50")["value"] == "v50"
    assert kv(node, "k00")["damaged_offsets"] == [2]
    assert node.call_ok({"type": "wal_append", "payload": "x"})["offset"] == N
    assert node.close() == 0

    assert walctl("repair", data_dir, "--yes").returncode == 0
    assert walctl("verify", data_dir).returncode == 0
    node = start(node_factory, data_dir)
    assert node.call({"type": "wal_read", "offset": 2})["code"] == 20
    assert_every_entry_in_place(node, N + 1, {2}, {N: "x"})
    assert node.close() == 0


def test_damaged_length_field_in_the_newest_segment_names_file_and_byte(node_factory, data_dir):
    fill(node_factory, data_dir)
    newest = seg(data_dir, 50)  # offsets 50..59
    flip_byte(newest, 2 * RECORD, 0x40)  # offset 52's length: its end is unknown

    node = node_factory("--data-dir", data_dir)
    assert node.proc.wait(30) != 0
    assert f"corruption in {newest} at byte {2 * RECORD}" in node.stderr_text()

    dry = walctl("repair", data_dir)
    assert "assumed to hold one record" in dry.stdout
    assert walctl("repair", data_dir, "--yes").returncode == 0
    node = start(node_factory, data_dir)
    assert node.call({"type": "wal_read", "offset": 52})["code"] == 20
    assert_every_entry_in_place(node, N, {52}, {})
    assert node.call_ok({"type": "wal_append", "payload": "x"})["offset"] == N
    assert node.close() == 0


def test_a_length_that_swallows_whole_records_is_refused_not_kept(node_factory, data_dir):
    # entry 0's length 0 -> 64 ends exactly where entry 5 starts, and entry 5
    # decodes: kept as one rotted record, entries 1..4 vanished and "tail"
    # moved from offset 5 to 1. The records found inside it make it a damaged
    # length field: refused, named, and repair keeps every offset.
    payloads = ["", *["xxxxxxxx"] * 4, "tail"]  # records of 8 and 16 bytes
    node = node_factory("--data-dir", data_dir, "--no-auto-compact")
    node.init()
    for i, p in enumerate(payloads):
        assert node.call_ok({"type": "wal_append", "payload": p})["offset"] == i
    assert node.close() == 0
    flip_byte(seg(data_dir, 0), 0, 0x40)

    node = node_factory("--data-dir", data_dir)
    assert node.proc.wait(30) != 0
    assert f"corruption in {seg(data_dir, 0)} at byte 0" in node.stderr_text()
    assert walctl("repair", data_dir, "--yes").returncode == 0
    node = start(node_factory, data_dir)
    assert node.call({"type": "wal_read", "offset": 0})["code"] == 20
    for i in range(1, len(payloads)):
        assert node.call_ok({"type": "wal_read", "offset": i})["payload"] == payloads[i]
    assert node.close() == 0


def test_rot_in_the_newest_segment_is_kept_and_reported(node_factory, data_dir):
    fill(node_factory, data_dir)
    flip_byte(seg(data_dir, 50), 2 * RECORD + HEADER_SIZE + 3)  # offset 52, not the tail

    node = start(node_factory, data_dir)
    assert node.call_ok({"type": "wal_read", "offset": 52})["checksum_valid"] is False
    assert node.call_ok({"type": "wal_read", "offset": 59})["payload"] == payload(59)
    assert node.call_ok({"type": "wal_append", "payload": "x"})["offset"] == N
    assert kv(node, "k57")["value"] == "v57"
    assert kv(node, "k51")["damaged_offsets"] == [52]
    assert "entry 52 fails its checksum" in node.stderr_text()
    assert node.close() == 0


def test_a_snapshot_carries_the_damaged_offsets_it_covers(node_factory, data_dir):
    fill(node_factory, data_dir)
    flip_byte(seg(data_dir, 0), 3 * RECORD + HEADER_SIZE + 5)
    node = start(node_factory, data_dir)
    assert node.call_ok({"type": "wal_snapshot"})["snapshot_offset"] == N
    node.call_ok({"type": "wal_compact", "snapshot_at_offset": N})  # the damaged record is gone
    assert node.call_ok({"type": "wal_info"})["first_offset"] == N
    assert node.close() == 0

    node = start(node_factory, data_dir)  # the state comes from the snapshot alone
    assert kv(node, "k50")["value"] == "v50"
    refused = kv(node, "k01")
    assert refused["code"] == 22 and refused["damaged_offsets"] == [3]
    assert node.close() == 0
