"""walctl verify finds every bad record; walctl repair marks them lost in place,
keeping every valid record at its offset."""

from __future__ import annotations

import os

from tests.damage import flip_byte
from tests.nodeproc import walctl
from wal.segment import scan_file


def fill(node_factory, data_dir: str, n: int) -> None:
    node = node_factory("--data-dir", data_dir, "--max-segment-bytes", "160")
    node.init()
    for i in range(n):
        node.call({"type": "wal_append", "payload": f"entry-{i:04d}"})  # 18-byte records
    assert node.close() == 0


def test_verify_and_repair_a_corrupt_sealed_segment(node_factory, data_dir):
    fill(node_factory, data_dir, 25)  # 8 records of 18 bytes per 160-byte segment
    wal = os.path.join(data_dir, "wal")
    seg8 = os.path.join(wal, "00000000000000000008.log")
    seg16 = os.path.join(wal, "00000000000000000016.log")
    flip_byte(seg8, 3 * 18 + 10, 0x20)  # a payload byte of offset 11
    flip_byte(seg16, 5 * 18 + 9, 0x20)  # and of offset 21

    out = walctl("verify", data_dir)
    assert out.returncode == 3
    assert f"CORRUPT: {seg8} at byte 54: record checksum mismatch" in out.stdout
    assert f"CORRUPT: {seg16} at byte 90" in out.stdout  # every bad record, not the first only
    assert "23 valid records; 2 corrupt region(s)" in out.stdout

    dry = walctl("repair", data_dir)
    assert dry.returncode == 1 and "nothing changed" in dry.stdout
    marks = "with lost-record markers for entry"
    assert f"overwrite bytes 54 to 72 of {seg8} {marks} 11" in dry.stdout
    assert f"overwrite bytes 90 to 108 of {seg16} {marks} 21" in dry.stdout
    before = {n: os.path.getsize(os.path.join(wal, n)) for n in os.listdir(wal)}

    done = walctl("repair", data_dir, "--yes")
    assert done.returncode == 0, done.stderr
    # nothing removed, nothing moved: every file keeps its size, the indexes stay
    assert {n: os.path.getsize(os.path.join(wal, n)) for n in os.listdir(wal)} == before
    out = walctl("verify", data_dir)
    assert out.returncode == 0 and "[11, 21]" in out.stdout

    node = node_factory("--data-dir", data_dir)
    node.init()
    info = node.call({"type": "wal_info"})
    assert (info["first_offset"], info["next_offset"]) == (0, 25)
    assert node.call({"type": "wal_read", "offset": 11})["code"] == 20
    for i in (10, 12, 20, 22, 24):
        assert node.call({"type": "wal_read", "offset": i})["payload"] == f"entry-{i:04d}"
    assert node.call({"type": "wal_append", "payload": "new"})["offset"] == 25


def test_repair_refuses_while_walnode_runs(node_factory, data_dir):
    fill(node_factory, data_dir, 3)
    node = node_factory("--data-dir", data_dir)
    node.init()
    out = walctl("repair", data_dir, "--yes")
    assert out.returncode == 2 and "in use by walnode supervisor" in out.stderr


def test_verify_calls_a_torn_tail_harmless(node_factory, data_dir):
    fill(node_factory, data_dir, 3)
    path = os.path.join(data_dir, "wal", "00000000000000000000.log")
    with open(path, "r+b") as f:  # where the next append lands, over the preallocated zeros
        f.seek(scan_file(path).valid_end)
        f.write(b"\x30\x00\x00\x00abc")
    out = walctl("verify", data_dir)
    assert out.returncode == 0 and "torn tail (walnode cuts it at start)" in out.stdout
