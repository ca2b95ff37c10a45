"""The compactor: kv_get, snapshots, compaction, recovery from snapshots, restarts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest

from tests.nodeproc import wait_until
from wal import Log
from wal import snapshot as snapfile


def snap_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "snapshots")


def snap_path(data_dir: str, offset: int) -> str:
    return os.path.join(snap_dir(data_dir), f"{offset:020d}.snap")


def snap_files(data_dir: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(snap_dir(data_dir)) if n.endswith(".snap"))
    except FileNotFoundError:
        return []


def append(node, payload: str) -> int:
    body = node.call({"type": "wal_append", "payload": payload})
    assert body["type"] == "wal_append_ok", body
    return body["offset"]


def pipeline(node, payloads: list[str]) -> list[int]:
    """Send every append without waiting, then collect their offsets in order."""
    ids = [node.send({"type": "wal_append", "payload": p}) for p in payloads]
    offsets = []
    for msg_id in ids:
        body = node.reply_to(msg_id)["body"]
        assert body["type"] == "wal_append_ok", body
        offsets.append(body["offset"])
    return offsets


def kv(node, key: str) -> dict:
    return node.call({"type": "kv_get", "key": key})


def value(node, key: str) -> str | None:
    """The key's value, or None for error 20 (any other answer fails)."""
    body = kv(node, key)
    if body["type"] == "error":
        assert body["code"] == 20, body
        return None
    assert body["type"] == "kv_get_ok" and body["key"] == key, body
    return body["value"]


def values(node, keys) -> dict[str, str | None]:
    return {k: value(node, k) for k in keys}


def info(node) -> dict:
    return node.call_ok({"type": "wal_info"})


def take_snapshot(node) -> dict:
    return node.call_ok({"type": "wal_snapshot"})


def fold(payloads: list[str]) -> dict[str, str]:
    """The state machine of PROTOCOL.md, written out independently."""
    state: dict[str, str] = {}
    for p in payloads:
        if p.startswith("set "):
            key, sep, val = p[4:].partition("=")
            if sep and key and " " not in key:
                state[key] = val
        elif p.startswith("del "):
            key = p[4:]
            if key and " " not in key and "=" not in key:
                state.pop(key, None)
    return state


# -- 1. kv_get -----------------------------------------------------------------


def test_kv_get_reads_its_own_pipelined_writes(node_factory):
    node = node_factory()
    node.init()
    assert pipeline(node, ["set a=1", "set b=2", "del a", "set c="]) == [0, 1, 2, 3]
    b = kv(node, "b")
    assert b["type"] == "kv_get_ok", b
    assert b["value"] == "2" and b["applied_offset"] == 4
    a = kv(node, "a")
    assert a["type"] == "error" and a["code"] == 20, a
    c = kv(node, "c")
    assert c["type"] == "kv_get_ok" and c["value"] == "", c

    # payloads that are not commands leave the state as it is
    pipeline(node, ["hello", "set a b=1", "set =x", "del", "del a b", "set"])
    assert values(node, ["a", "b", "c", "a b", ""]) == {
        "a": None,
        "b": "2",
        "c": "",
        "a b": None,
        "": None,
    }
    assert kv(node, "b")["applied_offset"] == 10

    # a kv_get sent right after an append's reply sees that append
    for i in range(50):
        msg_id = node.send({"type": "wal_append", "payload": f"set ryw{i}=v{i}"})
        assert node.reply_to(msg_id)["body"]["type"] == "wal_append_ok"
        body = kv(node, f"ryw{i}")
        assert body["type"] == "kv_get_ok" and body["value"] == f"v{i}", (i, body)
        assert body["applied_offset"] >= 11 + i


# -- 2. wal_snapshot ---------------------------------------------------------------


def test_snapshot_covers_pipelined_appends_and_matches_the_file(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir, "--no-auto-compact")
    node.init()
    pipeline(node, [f"set k{i}={i}" for i in range(20)])
    # appends sent just before the snapshot, their replies not awaited
    ids = [node.send({"type": "wal_append", "payload": f"set p{i}={i}"}) for i in range(30)]
    snap_id = node.send({"type": "wal_snapshot"})
    snap = node.reply_to(snap_id)["body"]
    assert snap["type"] == "wal_snapshot_ok", snap
    for msg_id in ids:
        assert node.reply_to(msg_id)["body"]["type"] == "wal_append_ok"
    wi = info(node)
    assert wi["next_offset"] == 50
    assert snap["snapshot_offset"] == wi["next_offset"]
    path = snap_path(data_dir, snap["snapshot_offset"])
    assert os.path.exists(path), snap_files(data_dir)
    assert snap["snapshot_size_bytes"] == os.path.getsize(path)
    assert wi["snapshot_offset"] == snap["snapshot_offset"]
    with open(path, "rb") as f:
        offset, state = snapfile.decode(f.read())
    assert offset == 50
    assert state == {**{f"k{i}": str(i) for i in range(20)}, **{f"p{i}": str(i) for i in range(30)}}


# -- 3. wal_compact refusals and no-ops -----------------------------------------------


def test_compact_needs_a_covering_snapshot(node_factory):
    node = node_factory("--no-auto-compact")
    node.init()
    pipeline(node, [f"set k{i}={i}" for i in range(10)])

    body = node.call({"type": "wal_compact", "snapshot_at_offset": 5})
    assert body["type"] == "error" and body["code"] == 22, body
    assert "snapshot_offset" in body and body["snapshot_offset"] is None, body
    assert info(node)["entries"] == 10

    assert take_snapshot(node)["snapshot_offset"] == 10
    pipeline(node, [f"set k{i}={i}" for i in range(10, 15)])
    body = node.call({"type": "wal_compact", "snapshot_at_offset": 12})
    assert body["type"] == "error" and body["code"] == 22, body
    assert body["snapshot_offset"] == 10, body
    wi = info(node)
    assert wi["entries"] == 15 and wi["first_offset"] == 0

    body = node.call({"type": "wal_compact", "snapshot_at_offset": 6})
    assert body["type"] == "wal_compact_ok", body
    assert body["entries_before"] == 15 and body["entries_after"] == 9
    assert body["bytes_freed"] == sum(8 + len(f"set k{i}={i}") for i in range(6))
    assert info(node)["first_offset"] == 6

    for at in (6, 3, 0):  # at or below first_offset: nothing to remove
        body = node.call({"type": "wal_compact", "snapshot_at_offset": at})
        assert body["type"] == "wal_compact_ok", (at, body)
        assert body["bytes_freed"] == 0, (at, body)
        assert body["entries_before"] == body["entries_after"] == 9, (at, body)
    wi = info(node)
    assert wi["entries"] == 9 and wi["first_offset"] == 6 and wi["next_offset"] == 15


# -- 4. restart --------------------------------------------------------------------


def segment_list(node) -> list[tuple]:
    body = node.call({"type": "wal_segment_info"})
    assert body["type"] == "wal_segment_info_ok", body
    return [(s["file"], s["start_offset"], s["end_offset"], s["entries"]) for s in body["segments"]]


def test_state_survives_a_restart(node_factory, data_dir):
    """A graceful stop snapshots what the last snapshot does not cover, so the
    next start replays nothing; without that snapshot it replays from the last."""
    args = ("--data-dir", data_dir, "--no-auto-compact", "--max-segment-bytes", "128")
    node = node_factory(*args)
    node.init()
    payloads = [f"set k{i % 7}=v{i}" if i % 5 else f"del k{i % 7}" for i in range(40)]
    pipeline(node, payloads)
    snap = take_snapshot(node)
    assert snap["snapshot_offset"] == 40
    body = node.call({"type": "wal_compact", "snapshot_at_offset": 25})
    assert body["type"] == "wal_compact_ok", body
    more = [f"set k{i % 9}=w{i}" for i in range(40, 55)] + ["del k3", "noise"]
    pipeline(node, more)
    keys = [f"k{i}" for i in range(10)]
    before = values(node, keys)
    assert before == {k: fold(payloads + more).get(k) for k in keys}
    info_before = info(node)
    segs_before = segment_list(node)
    assert info_before["first_offset"] == 25 and info_before["next_offset"] == 57
    assert len(segs_before) > 2
    assert node.close() == 0

    node = node_factory(*args)
    node.init()
    assert values(node, keys) == before
    info_after = info(node)
    for field in ("first_offset", "next_offset", "entries", "total_bytes"):
        assert info_after[field] == info_before[field], field
    assert segment_list(node) == segs_before
    # the graceful stop snapshotted the 17 entries after offset 40: nothing to replay
    assert info_before["snapshot_offset"] == 40 and info_after["snapshot_offset"] == 57
    recovery = node.status()["recoveries"]["compactor"]
    assert recovery["snapshot_offset"] == 57
    assert recovery["entries_recovered"] == 0
    assert node.close() == 0

    os.remove(os.path.join(data_dir, "snapshots", "00000000000000000057.snap"))
    shutil.rmtree(os.path.join(data_dir, "state"))  # and without the state store
    node = node_factory(*args)  # without them: the snapshot at 40, the log replayed from there
    node.init()
    assert values(node, keys) == before
    recovery = node.status()["recoveries"]["compactor"]
    assert (recovery["snapshot_offset"], recovery["entries_recovered"]) == (40, 17)


def test_a_stop_right_after_appends_snapshots_every_one(node_factory, data_dir):
    """The stop's snapshot covers every entry acknowledged before the stop, even
    those the writer's last notice (at most one per NOTICE_INTERVAL_S, 50 ms)
    has not told yet: the compactor asks the writer for its durable offset
    first. So the next start replays nothing."""
    args = ("--data-dir", data_dir, "--no-auto-compact")
    node = node_factory(*args)
    node.init()
    pipeline(node, [f"set k{i}=v{i}" for i in range(30)])
    append(node, "set last=1")  # then stop at once: its notice is held
    assert node.close() == 0
    node = node_factory(*args)
    node.init()
    recovery = node.status()["recoveries"]["compactor"]
    assert (recovery["snapshot_offset"], recovery["entries_recovered"]) == (31, 0), recovery
    assert value(node, "last") == "1"
    assert node.close() == 0


# -- 5. damaged snapshots ---------------------------------------------------------------


def build_two_snapshots(node_factory, data_dir) -> tuple[list[str], dict[str, str | None]]:
    node = node_factory("--data-dir", data_dir, "--no-auto-compact")
    node.init()
    first = [f"set k{i}=a{i}" for i in range(10)]
    pipeline(node, first)
    assert take_snapshot(node)["snapshot_offset"] == 10
    second = [f"set k{i}=b{i}" for i in range(5)] + ["del k5", "del k6", "set k20=new"]
    second += ["set k0=c0", "noise"]
    pipeline(node, second)
    assert take_snapshot(node)["snapshot_offset"] == 20
    keys = [f"k{i}" for i in range(21)]
    full = values(node, keys)
    assert full == {k: fold(first + second).get(k) for k in keys}
    assert node.close() == 0
    return keys, full


def flip_middle_byte(path: str) -> None:
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0xFF
        f.seek(0)
        f.write(data)


def cut_in_half(path: str) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", [flip_middle_byte, cut_in_half], ids=["flipped", "truncated"])
def test_a_damaged_newest_snapshot_is_never_loaded(node_factory, data_dir, damage):
    keys, full = build_two_snapshots(node_factory, data_dir)
    damage(snap_path(data_dir, 20))
    shutil.rmtree(os.path.join(data_dir, "state"))  # rebuilt from the snapshots: which one?
    junk = os.path.join(snap_dir(data_dir), "00000000000000000030.snap.tmp")
    with open(junk, "wb") as f:
        f.write(b"half a snapshot")

    node = node_factory("--data-dir", data_dir, "--no-auto-compact")
    node.init()
    assert values(node, keys) == full  # snapshot 10 plus the log's 10..20
    recovery = node.status()["recoveries"]["compactor"]
    assert recovery["snapshot_offset"] == 10, recovery
    assert recovery["snapshots_skipped"] == 1, recovery
    assert recovery["entries_recovered"] == 10, recovery
    assert not os.path.exists(junk)
    skipped = [line for line in node.stderr if "compactor" in line and "skipped snapshot" in line]
    assert any("00000000000000000020.snap" in line for line in skipped), node.stderr_text()


def test_wal_info_does_not_advertise_a_damaged_snapshot(node_factory, data_dir):
    build_two_snapshots(node_factory, data_dir)
    flip_middle_byte(snap_path(data_dir, 20))
    node = node_factory("--data-dir", data_dir, "--no-auto-compact")
    node.init()
    assert node.status()["recoveries"]["compactor"]["snapshot_offset"] == 10
    # A client that trusts wal_info.snapshot_offset and compacts there is refused:
    refused = node.call({"type": "wal_compact", "snapshot_at_offset": 20})
    assert refused["type"] == "error" and refused["code"] == 22
    assert refused["snapshot_offset"] == 10
    # Regression: wal_info.snapshot_offset comes from the file names in
    # DIR/snapshots; it once still named the damaged snapshot at 20 that recovery
    # skipped. Recovery now moves a damaged snapshot aside (<name>.corrupt).
    assert info(node)["snapshot_offset"] == 10


# -- 6. automatic compaction -----------------------------------------------------------


AUTO = ("--snapshot-every", "100", "--keep-entries", "30", "--keep-snapshots", "2")


def test_automatic_snapshots_and_compaction(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir, *AUTO, "--max-segment-bytes", "256")
    node.init()
    for i in range(450):
        append(node, f"set k{i}=v{i}")
    append(node, "set k0=changed")  # 450
    append(node, "del k1")  # 451

    def compacted() -> bool:
        wi = info(node)
        snap = wi["snapshot_offset"]
        # a snapshot under --snapshot-every (100) entries behind the log's end (each is
        # taken once the compactor learns of 100 more, and notices come every 50 ms,
        # so where they fall depends on the pace); whole segments only: at least 30
        # entries kept behind it
        return snap is not None and snap > 452 - 100 and 0 < wi["first_offset"] <= snap - 30

    assert wait_until(compacted, timeout=5, interval=0.05), info(node)
    assert len(snap_files(data_dir)) <= 2, snap_files(data_dir)
    wi = info(node)
    # Where the 256-byte segments rolled: automatic compaction deletes whole
    # ones (no rewrite), so the log starts at the last roll at or below snap - 30,
    # and never past the oldest snapshot kept (the one to fall back on).
    oldest = int(snap_files(data_dir)[0][:20])
    assert oldest < wi["snapshot_offset"]
    rolls, size = [0], 0
    for i in range(452):
        n = 8 + len(f"set k{i}=v{i}" if i < 450 else ["set k0=changed", "del k1"][i - 450])
        if size and size + n > 256:
            rolls.append(i)
            size = 0
        size += n
    cut = min(wi["snapshot_offset"] - 30, oldest)
    assert wi["first_offset"] == max(b for b in rolls if b <= cut)
    assert wi["next_offset"] == 452 and wi["entries"] == 452 - wi["first_offset"]
    assert value(node, "k0") == "changed"
    assert value(node, "k1") is None
    assert value(node, "k2") == "v2"  # its entry (offset 2) is long gone
    assert value(node, "k449") == "v449"
    assert node.call({"type": "wal_read", "offset": 2})["code"] == 20


def test_no_auto_compact_never_snapshots(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir, *AUTO, "--no-auto-compact")
    node.init()
    for i in range(450):
        append(node, f"set k{i}=v{i}")
    time.sleep(0.5)
    wi = info(node)
    assert wi["snapshot_offset"] is None and wi["first_offset"] == 0 and wi["entries"] == 450
    assert snap_files(data_dir) == []


# -- 7. compactor killed ---------------------------------------------------------------


def test_compactor_killed_and_restarted(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir, "--no-auto-compact")
    node.init()
    payloads = [f"set k{i % 12}=v{i}" for i in range(60)] + ["del k3"]
    pipeline(node, payloads)
    keys = [f"k{i}" for i in range(20)]
    before = values(node, keys)
    assert before == {k: fold(payloads).get(k) for k in keys}

    old = node.pids()["compactor"]
    os.kill(old, signal.SIGKILL)
    # the writer keeps serving while the compactor is down or restarting
    down = ["set k15=down", "set k0=down", "del k4"]
    assert [append(node, p) for p in down] == [61, 62, 63]
    assert wait_until(lambda: node.restarted("compactor", old), timeout=10)
    after = values(node, keys)
    assert after == {k: fold(payloads + down).get(k) for k in keys}
    assert after == {**before, "k15": "down", "k0": "down", "k4": None}
    assert kv(node, "k0")["applied_offset"] == 64
    assert node.process("compactor")["restarts"] == 1
    assert append(node, "set k16=later") == 64
    assert value(node, "k16") == "later"


def test_kv_get_after_a_front_restart_sees_acknowledged_appends(node_factory):
    node = node_factory("--no-auto-compact")
    node.init()
    pipeline(node, [f"set x{i}={i}" for i in range(5)])  # acknowledged, never read back
    front = node.pids()["front"]
    os.kill(front, signal.SIGKILL)
    assert wait_until(lambda: node.restarted("front", front), timeout=10)
    # Regression: the front once kept `acked_next` (the offset kv_get makes the
    # compactor catch up to) only in memory, so a restarted front started from 0
    # and kv_get missed acknowledged appends. It now lives in the run directory.
    body = kv(node, "x4")
    assert body["type"] == "kv_get_ok" and body["value"] == "4", body
    assert body["applied_offset"] >= 5, body


# -- 8. a large snapshot does not stall appends ------------------------------------------


BIG = 200_000


def test_appends_go_on_while_a_large_snapshot_is_written(node_factory, data_dir):
    wal, _report = Log.open(os.path.join(data_dir, "wal"))
    filler = "v" * 100
    for i in range(BIG):
        wal.append(f"set key{i}={filler}".encode())
    wal.sync()
    wal.close()

    node = node_factory("--data-dir", data_dir, "--no-auto-compact")
    body = node.call({"type": "init", "node_id": "n1", "node_ids": ["n1"]}, timeout=30, src="c0")
    assert body["type"] == "init_ok", body
    probe = node.call({"type": "kv_get", "key": f"key{BIG - 1}"}, timeout=30)
    assert probe["type"] == "kv_get_ok" and probe["value"] == filler, probe

    snap_id = node.send({"type": "wal_snapshot"})
    append_ids = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(r["body"].get("in_reply_to") == snap_id for r in node.unclaimed):
            break
        msg_id = node.send({"type": "wal_append", "payload": f"set during{len(append_ids)}=x"})
        append_ids.append(msg_id)
        body = node.reply_to(msg_id)["body"]
        assert body["type"] == "wal_append_ok", body
    snap = node.reply_to(snap_id, timeout=20)["body"]
    assert snap["type"] == "wal_snapshot_ok", snap
    # stdout order: which append replies came out before the snapshot's reply
    replied = [json.loads(line)["body"].get("in_reply_to") for line in node.raw]
    before_snap = set(replied[: replied.index(snap_id)])
    acked_during = len(before_snap.intersection(append_ids))
    assert acked_during >= 10, (
        f"only {acked_during} of {len(append_ids)} appends acknowledged during the snapshot"
    )
    assert BIG <= snap["snapshot_offset"] <= BIG + len(append_ids)
    assert (
        os.path.getsize(snap_path(data_dir, snap["snapshot_offset"]))
        == (snap["snapshot_size_bytes"])
    )


def test_compact_at_or_below_the_first_offset_needs_no_snapshot(node_factory):
    """PROTOCOL: an offset at or below the first retained entry removes nothing
    and answers with zeros freed; above it, a covering snapshot is required."""
    node = node_factory("--no-auto-compact")
    node.init()
    node.call({"type": "wal_append", "payload": "set a=1"})
    body = node.call({"type": "wal_compact", "snapshot_at_offset": 0})
    assert body["type"] == "wal_compact_ok", body
    assert (body["entries_before"], body["entries_after"], body["bytes_freed"]) == (1, 1, 0)
    body = node.call({"type": "wal_compact", "snapshot_at_offset": 1})
    assert body["code"] == 22 and body["snapshot_offset"] is None


def test_recovery_never_prunes_the_fallback_snapshot(node_factory, data_dir):
    """Regression: recovery once pruned to --keep-snapshots before loading, so
    with the newest snapshot damaged the only valid one could be deleted, and
    a log compacted past offset 0 then had no state to rebuild from."""
    node = node_factory("--data-dir", data_dir, "--no-auto-compact", "--keep-snapshots", "5")
    node.init()
    for i in range(20):
        node.call({"type": "wal_append", "payload": f"set r{i % 4}={i}"})
        if i in (9, 19):
            node.call({"type": "wal_snapshot"})
    assert node.call({"type": "wal_compact", "snapshot_at_offset": 10})["entries_after"] == 10
    assert node.close() == 0
    newest = os.path.join(data_dir, "snapshots", f"{20:020d}.snap")
    with open(newest, "r+b") as f:
        f.seek(30)
        f.write(b"\xff\xff")
    node = node_factory("--data-dir", data_dir, "--no-auto-compact", "--keep-snapshots", "1")
    node.init()
    assert node.status()["recoveries"]["compactor"]["snapshot_offset"] == 10
    assert [node.call({"type": "kv_get", "key": f"r{k}"})["value"] for k in range(4)] == [
        "16",
        "17",
        "18",
        "19",
    ]
