"""Power loss, simulated: nothing acknowledged is lost at 600 random cuts.

One real walnode (supervisor, writer, compactor, front) runs a workload of
appends, snapshots and compactions with every file-system change it makes
traced (wal/fstrace.py). The test writes an `ack` record into the same trace
as each wal_append_ok arrives, so a cut at any point of the trace knows
exactly which entries had been acknowledged by then. tests/powerloss.py
replays the trace into a disk model that keeps only what was fsynced (plus,
half of the time, an in-order prefix of the rest with its last write torn),
and each cut is recovered with the code the writer and compactor run at
start, then checked: every acknowledged entry is there, every retained entry
is exactly what was written at its offset, and snapshot + log rebuild the
state machine of the entries they hold.
"""

from __future__ import annotations

import os
import random
import shutil

import msgpack
import pytest

from tests import powerloss
from tests.nodeproc import Node
from wal import DataDir, Log, snapshot
from wal.fstrace import ROOT_ENV, TRACE_ENV
from wal.statemachine import StateMachine

CUTS = 600
SEED = int(os.environ.get("WALNODE_POWERLOSS_SEED", "20261122"))
SEGMENT_BYTES = 1024
NODE_FLAGS = [
    f"--max-segment-bytes={SEGMENT_BYTES}",
    "--snapshot-every=150",
    "--keep-entries=60",
    "--keep-snapshots=2",
]


def payload(i: int) -> str:
    # Keys repeat, so the state machine's final value depends on the order.
    return f"set k{i % 97}=v{i}"


def run_workload(node: Node, trace_path: str, appends: int, rng: random.Random) -> dict:
    """Appends in waves of 1..24 in flight, with explicit snapshots and
    compactions between some waves. Returns offset -> payload of every append."""
    written: dict[int, str] = {}
    fd = os.open(trace_path, os.O_WRONLY | os.O_APPEND)
    try:
        i = 0
        while i < appends:
            wave = {}
            for _ in range(min(rng.randint(1, 24), appends - i)):
                wave[node.send({"type": "wal_append", "payload": payload(i)})] = payload(i)
                i += 1
            extra = []
            if rng.random() < 0.08:
                extra.append(node.send({"type": "wal_snapshot"}))
            for _ in range(len(wave) + len(extra)):
                body = node.recv()["body"]
                if body["in_reply_to"] in wave:
                    assert body["type"] == "wal_append_ok", body
                    written[body["offset"]] = wave[body["in_reply_to"]]
                    os.write(fd, msgpack.packb(["ack", body["offset"]]))
                else:
                    assert body["type"] == "wal_snapshot_ok", body
                    at = body["snapshot_offset"] - rng.randint(0, 40)
                    node.call_ok({"type": "wal_compact", "snapshot_at_offset": at})
    finally:
        os.close(fd)
    return written


def check_recovery(root: str, written: dict[int, str], acked: set[int]) -> None:
    """Recover `root` as the writer and compactor do at start, and check it."""
    DataDir(root, create=False).read_meta()  # replaced atomically: never torn
    wal, report = Log.open(os.path.join(root, "wal"), max_segment_bytes=SEGMENT_BYTES)
    try:
        first, next_ = wal.first_offset, wal.next_offset
        lost = sorted(o for o in acked if o >= next_)
        assert not lost, f"acknowledged offsets {lost[:10]} are gone (log ends at {next_})"
        for e in wal.scan(first, next_ - first, 1 << 30) if next_ > first else []:
            assert e.checksum_valid and e.payload.decode() == written[e.offset], (
                f"offset {e.offset} holds {e.payload!r}, written {written[e.offset]!r}"
            )
        snap, _ = snapshot.load_latest(os.path.join(root, "snapshots"))
        base = snap.offset if snap else 0
        assert first <= base <= next_ or first == base == 0, (
            f"snapshot at {base} does not meet the log [{first}, {next_}): entries lost"
        )
        sm = StateMachine(snap.state if snap else {}, base)
        for o in range(base, next_):
            sm.apply(written[o])
        expected = StateMachine()
        for o in range(next_):
            expected.apply(written[o])
        assert sm.state == expected.state, "snapshot + log do not rebuild the state"
    finally:
        wal.close()


def check_node_serves(node_factory, root: str, written: dict[int, str], acked: set[int]) -> None:
    """The real processes start on the cut directory and serve what was acknowledged."""
    node = node_factory(f"--data-dir={root}", *NODE_FLAGS)
    node.init()
    info = node.call_ok({"type": "wal_info"})
    for o in sorted(acked)[-3:]:
        if o >= info["first_offset"]:
            got = node.call_ok({"type": "wal_read", "offset": o})
            assert got["payload"] == written[o] and got["checksum_valid"], got
    appended = node.call_ok({"type": "wal_append", "payload": "set after=cut"})
    assert appended["offset"] == info["next_offset"]
    assert node.close() == 0


@pytest.mark.timeout(240)
def test_no_acknowledged_entry_is_lost_at_600_power_cuts(tmp_path, node_factory):
    root = tmp_path / "data"
    root.mkdir()
    trace = tmp_path / "trace"
    trace.touch()
    rng = random.Random(SEED)
    node = node_factory(
        f"--data-dir={root}",
        *NODE_FLAGS,
        env={TRACE_ENV: str(trace), ROOT_ENV: str(root)},
    )
    node.init()
    written = run_workload(node, str(trace), 1500, rng)
    assert node.close() == 0

    records = powerloss.read_trace(str(trace))
    fs_events = [i for i, r in enumerate(records) if r[0] != "ack"]
    disk = powerloss.Disk(str(root))
    for r in records:
        disk.apply(r)
    # The trace is complete: replayed, it gives the directory as it really is.
    assert disk.live_state() == powerloss.read_tree(str(root))
    kinds = {r[0] for r in records}
    assert {"write", "sync", "rename", "unlink", "mkdir", "truncate", "ack"} <= kinds

    cuts = set(rng.sample(fs_events, min(CUTS, len(fs_events))))
    assert len(cuts) >= 500, f"only {len(fs_events)} file-system events traced"
    disk = powerloss.Disk(str(root))
    acked: set[int] = set()
    torn = 0
    restart = set(rng.sample(sorted(cuts), 3))  # cuts the real node is started on too
    for i, r in enumerate(records):
        if r[0] == "ack":
            acked.add(r[1])
            continue
        disk.apply(r)
        if i not in cuts:
            continue
        tree, how = powerloss.random_cut(disk, rng)
        torn += how.startswith("keep")
        dest = tmp_path / f"cut{i}"
        powerloss.materialize(tree, str(dest))
        try:
            check_recovery(str(dest), written, acked)
            if i in restart:
                check_node_serves(node_factory, str(dest), written, acked)
        except Exception as err:
            raise AssertionError(
                f"power cut after trace record {i} ({r[0]}; {how}; seed {SEED}): {err}"
            ) from err
        shutil.rmtree(dest)
    assert torn > 100 and len(acked) == 1500


def test_the_model_loses_what_was_not_fsynced(tmp_path):
    """The model itself: unsynced data and directory entries are gone after a
    cut, synced ones stay, and a torn write keeps only its first bytes."""
    root = str(tmp_path)
    seg = os.path.join(root, "a.log")
    disk = powerloss.Disk(root)
    for rec in [
        ["open", 1, 3, seg, os.O_RDWR | os.O_CREAT],
        ["write", 1, 3, 0, b"hello"],
        ["sync", 1, 3],
        ["write", 1, 3, 5, b" world"],
    ]:
        disk.apply(rec)
    assert disk.crash_state() == {}, "the file's directory entry was never synced"
    disk.apply(["open", 1, 4, root, os.O_RDONLY | os.O_DIRECTORY])
    disk.apply(["sync", 1, 4])
    assert disk.crash_state() == {"a.log": b"hello"}
    assert disk.crash_state(keep=1, tear=3) == {"a.log": b"hello wo"}
    disk.apply(["rename", 1, seg, seg + ".old"])
    assert disk.crash_state() == {"a.log": b"hello"}
    assert disk.crash_state(keep=2) == {"a.log.old": b"hello world"}
    assert disk.live_state() == {"a.log.old": b"hello world"}
