"""WalStore (wal/replication/store.py): the replication protocol's LogStore on real files.

Unit tests against a real data directory; the replication simulation (tests/replsim.py) with
WalStore in every replica; and power cuts at every sync of a store workload (epoch changes,
truncations, snapshot installs) on the per-file disk model of wal/powerloss.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.replsim import SimConfig, Simulation, Violation
from tests.sim_walstore import DiskStore, decode_record, encode_record, open_store, stores_in
from wal import DataDir, Log, epochs, powerloss, snapshot
from wal.errors import WalError
from wal.record import EPOCH_FLAG
from wal.replication.protocol import Entry, Position, Snapshot
from wal.tail import LogTail

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None
SIM_SCHEDULES = 150  # a CI share: about 10 s here; the full run is documented in REPLICATION.md


def entries(first: int, epoch: int, count: int, start_record: bool = False) -> list[Entry]:
    out = [Entry(first, epoch, None)] if start_record else []
    while len(out) < count + start_record:
        out.append(Entry(first + len(out), epoch, b"set k%d=e%d" % (first + len(out), epoch)))
    return out


def epoch_lines(path: str) -> str:
    with open(os.path.join(path, "wal", "EPOCHS")) as f:
        return f.read()


def test_epoch_start_record_reads_back_everywhere(tmp_path):
    """The record kind: EPOCH_FLAG in the length, the epoch u64 LE; read by the log (active and
    sealed segments, after reopening), by the compactor's tail (as an empty payload, which the
    state machine leaves alone) and by walctl dump and verify."""
    path = str(tmp_path)
    store = open_store(path)
    store.append(entries(0, 4, 12, start_record=True))
    store.sync()
    assert store.log.segment_count > 1  # the epoch-start record is in a sealed segment now
    store.close()
    with open(os.path.join(path, "wal", "00000000000000000000.log"), "rb") as f:
        head = f.read(16)
    assert int.from_bytes(head[:4], "little") == EPOCH_FLAG | 8
    assert head[8:16] == (4).to_bytes(8, "little")
    store = open_store(path)
    got = store.read(0, 3)
    assert got[0] == Entry(0, 4, None) and got[1] == Entry(1, 4, b"set k1=e4")
    first = store.log.read(0)
    assert (first.epoch_start, first.payload, first.checksum_valid) == (4, b"", True)
    store.close()
    tail = LogTail(os.path.join(path, "wal"), 0)
    assert [p for _, p in tail.read(2)] == [b"", b"set k1=e4"]
    tail.close()
    dump = subprocess.run(
        [sys.executable, "-m", "walctl", "dump", path], capture_output=True, text=True, cwd=ROOT
    )
    lines = [json.loads(line) for line in dump.stdout.splitlines()]
    assert lines[0]["epoch_start"] == 4 and lines[0]["payload"] == ""
    assert "epoch_start" not in lines[1] and len(lines) == 13
    verify = subprocess.run([sys.executable, "-m", "walctl", "verify", path], cwd=ROOT)
    assert verify.returncode == 0


def test_epochs_are_written_before_the_entries_of_a_new_epoch(tmp_path):
    path = str(tmp_path)
    store = open_store(path)
    assert not os.path.exists(os.path.join(path, "wal", "EPOCHS"))  # no line without an entry
    store.append(entries(0, 2, 3, start_record=True))
    assert epoch_lines(path) == "2 0\n"  # on disk before the entries are even flushed
    store.sync()
    store.append(entries(4, 5, 2, start_record=True))
    assert epoch_lines(path) == "2 0\n5 4\n"
    assert [store.epoch_at(o) for o in (-1, 0, 3, 4, 6)] == [0, 2, 2, 5, 5]
    with pytest.raises(ValueError):
        store.append([Entry(7, 3, b"older epoch")])
    store.log.close()  # never flushed: the entries of epoch 5 are gone at the next open...
    store = open_store(path)
    assert store.end() == 4 and epoch_lines(path) == "2 0\n"  # ...and with them their line
    store.close()


def test_truncate_is_durable_and_drops_the_lines_after_it(tmp_path):
    path = str(tmp_path)
    store = open_store(path)
    store.append(entries(0, 2, 9, start_record=True) + entries(10, 3, 9, start_record=True))
    store.sync()
    segments = store.log.segment_count
    reached = DataDir(path).read_meta()["reached_segment"]
    store.truncate(6)  # back into an early, sealed segment: later files go
    assert store.end() == 6 and store.durable_end() == 6
    assert store.log.segment_count < segments
    assert DataDir(path).read_meta()["reached_segment"] < reached
    assert epoch_lines(path) == "2 0\n"
    store.append(entries(6, 2, 2))  # the same epoch as the last line: no line is written...
    store.sync()
    store.close()
    store = open_store(path)  # ...so the cut line (3 10) must not come back with them
    assert store.end() == 8 and [store.epoch_at(o) for o in range(8)] == [2] * 8
    assert epoch_lines(path) == "2 0\n"
    store.log.truncate_before(4)
    with pytest.raises(WalError):
        store.truncate(2)  # below the log's first offset: refused
    store.close()


def test_current_epoch_is_durable_and_only_grows(tmp_path):
    path = str(tmp_path)
    store = open_store(path)
    assert store.current_epoch() == 0
    store.set_current_epoch(7)
    assert DataDir(path).read_meta()["current_epoch"] == 7
    with pytest.raises(WalError):
        store.set_current_epoch(6)
    store.close()
    assert open_store(path).current_epoch() == 7


def leader_snapshot(records: list, epoch: int) -> Snapshot:
    history = {f"{o:08d}": encode_record(r) for o, r in enumerate(records)}
    return Snapshot(
        Position(epoch, len(records) - 1), {"state": history, "damaged": [], "rewritten": []}
    )


def test_install_snapshot_keeps_a_matching_suffix_and_replaces_a_diverging_log(tmp_path):
    path = str(tmp_path)
    disk = DiskStore(path)
    disk.append(entries(0, 2, 12, start_record=True))
    disk.sync()
    ours = disk.records()
    disk.install_snapshot(leader_snapshot(ours[:8], 2))  # agrees at offset 7: suffix kept
    assert disk.records() == ours and disk.end() == 13
    snap, _ = snapshot.load_latest(os.path.join(path, "snapshots"))
    assert snap is not None and (snap.offset, snap.epoch) == (8, 2)
    assert disk.snapshot() == leader_snapshot(ours[:8], 2)
    # a leader whose log differs from offset 5 on, and is longer: ours goes
    theirs = ours[:5] + [(6, None)] + [(6, b"theirs%d" % i) for i in range(14)]
    disk.install_snapshot(leader_snapshot(theirs, 6))
    assert (disk.start(), disk.end(), disk.epoch_at(19)) == (20, 20, 6)
    assert disk.records() == theirs and epoch_lines(path) == "6 19\n"
    disk.append([Entry(20, 6, b"next")] + entries(21, 6, 8))
    disk.sync()
    disk.close()
    disk = DiskStore(path)
    ours = disk.records()
    assert ours[:21] == [*theirs, (6, b"next")] and disk.epoch_at(19) == 6
    # a leader whose snapshot is shorter than our log and differs at its last entry: our
    # suffix after it goes too (it follows an entry the leader does not have)
    shorter = ours[:24] + [(7, None)]
    disk.install_snapshot(leader_snapshot(shorter, 7))
    assert (disk.start(), disk.end(), disk.records()) == (25, 25, shorter)
    disk.close()


def test_an_install_cut_after_its_snapshot_file_is_finished_at_open(tmp_path):
    """The snapshot file is the install's commit point: with only it written, the next open
    makes the log meet it (a diverging suffix cut, the log restarted after it)."""
    path = str(tmp_path)
    disk = DiskStore(path)
    disk.append(entries(0, 2, 12, start_record=True))
    disk.sync()
    disk.close()
    theirs = [(1, b"a")] * 5 + [(3, None)] + [(3, b"b")] * 10
    history = {f"{o:08d}": encode_record(r) for o, r in enumerate(theirs)}
    snapshot.write(os.path.join(path, "snapshots"), len(theirs), history, epoch=3)
    disk = DiskStore(path)
    assert (disk.start(), disk.end(), disk.epoch_at(15)) == (16, 16, 3)
    assert disk.records() == theirs
    disk.close()


def test_snapshot_format_is_unchanged_without_an_epoch_and_carries_one_as_version_3():
    state = {"k": "v"}
    v1 = snapshot.encode(5, state)
    assert v1[:8] == snapshot.MAGIC and snapshot.decode_all(v1) == (
        5,
        state,
        snapshot.Damage(),
        None,
    )
    v3 = snapshot.encode(5, state, epoch=9)
    assert v3[:8] == b"WNSNAP\x00\x03" and snapshot.decode_all(v3)[3] == 9
    assert snapshot.decode(v3) == (5, state)
    assert decode_record(encode_record((3, None))) == (3, None)
    assert decode_record(encode_record((3, b""))) == (3, b"")


def test_compactor_snapshot_records_the_epoch_from_epochs(tmp_path):
    path = str(tmp_path)
    store = open_store(path)
    assert epochs.snapshot_epoch(store.datadir.wal_dir, 3) is None  # single node: no epoch
    store.append(entries(0, 2, 3, start_record=True) + entries(4, 6, 3, start_record=True))
    assert epochs.snapshot_epoch(store.datadir.wal_dir, 3) == 2
    assert epochs.snapshot_epoch(store.datadir.wal_dir, 4) == 6
    store.close()


# --- the simulation, on the real store ---


def run_on_disk(seed: int, config: SimConfig) -> None:
    root = tempfile.mkdtemp(prefix="walstore-sim-", dir=SCRATCH)
    simulation = Simulation(seed, config, make_store=stores_in(root))
    try:
        simulation.run()
    finally:
        for store in simulation.stores.values():
            store.close()
        shutil.rmtree(root)


@pytest.mark.timeout(120)
def test_the_simulation_keeps_every_acknowledged_entry_on_the_real_store():
    for seed in range(SIM_SCHEDULES):
        try:
            run_on_disk(seed, SimConfig())
        except Violation as violation:
            raise AssertionError(
                f"seed {seed} on WalStore: {violation}; replay: run_on_disk({seed}, SimConfig())"
            ) from None


@pytest.mark.parametrize(
    ("broken", "seed"), [("one-replica-commit", 0), ("no-up-to-date-check", 31)]
)
@pytest.mark.timeout(60)
def test_a_broken_rule_is_still_caught_on_the_real_store(broken, seed):
    with pytest.raises(Violation):
        run_on_disk(seed, SimConfig(broken=broken))


# --- power cuts at every sync of a store workload ---


def check_cut(dest: str, written: dict, acked: list, epoch: int, unprotected: int | None) -> None:
    disk = DiskStore(os.path.join(dest, "replica"))  # opening never refuses
    try:
        records = disk.records()
        start = disk.start()
        for o, record in enumerate(records):
            assert record in written.get(o, ()), f"offset {o} holds {record}, never written there"
        first = max(start - 1, 0)  # the snapshot's last entry, or the log's first
        got_epochs = [disk.epoch_at(o) for o in range(first, disk.end())]
        assert got_epochs == [e for e, _ in records[first:]], "epoch_at disagrees with the records"
        assert got_epochs == sorted(got_epochs), "epochs go down"
        protected = acked if unprotected is None else acked[:unprotected]
        lost = next(
            (o for o, r in enumerate(protected) if o >= len(records) or records[o] != r), None
        )
        assert lost is None, f"durable offset {lost} lost ({len(records)} records left)"
        assert disk.current_epoch() >= epoch, f"current epoch {disk.current_epoch()} < {epoch}"
    finally:
        disk.close()


@pytest.mark.timeout(120)
def test_power_cut_at_every_sync_of_epoch_changes_truncations_and_installs(tmp_path):
    rng = random.Random(20261202)
    root, trace = tmp_path / "data", tmp_path / "trace"
    root.mkdir()
    trace.touch()
    subprocess.run(
        [sys.executable, "-m", "tests.walstore_workload", str(trace), str(root)],
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    records = powerloss.read_trace(str(trace))
    disk = powerloss.Disk(str(root))
    written: dict[int, set] = {}
    acked: list = []
    epoch, unprotected = 0, None
    scratch = tempfile.mkdtemp(prefix="walstore-cuts-", dir=SCRATCH)
    cuts = 0
    try:
        for i, r in enumerate(records):
            if r[0] == "wrote":
                for o, e, p in r[1]:
                    written.setdefault(o, set()).add((e, p))
                continue
            if r[0] == "unprotect":
                unprotected = r[1]
                continue
            if r[0] == "ack":
                epoch, acked, unprotected = r[1], [tuple(x) for x in r[2]], None
                continue
            if r[0] == "sync":
                for n, keep in enumerate([*disk.extremes(), powerloss.random_keep(disk, rng)]):
                    dest = os.path.join(scratch, f"cut{i}-{n}")
                    powerloss.materialize(disk.crash_state(keep), dest)
                    try:
                        check_cut(dest, written, acked, epoch, unprotected)
                    except Exception as err:
                        raise AssertionError(
                            f"cut before trace record {i} ({keep.how}): {err}"
                        ) from err
                    shutil.rmtree(dest)
                    cuts += 1
            disk.apply(r)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{cuts} cuts at {cuts // 4} syncs")
    assert cuts >= 400 and len(acked) > 40


def test_a_node_serves_epoch_start_records_and_its_state_machine_skips_them(tmp_path, node_factory):
    """The real processes on a log holding epoch-start records: wal_read answers ok with payload
    "" and epoch_start, wal_scan lists it with epoch_start, kv_get and a snapshot (by the
    compactor, over the tail) see only the entries around it, and appends go on after it."""
    path = str(tmp_path / "data")
    log, _ = Log.open(os.path.join(path, "wal"))
    log.append_epoch_start(3)
    log.append(b"set a=1")
    log.append_epoch_start(5)
    log.append(b"set b=2")
    log.sync()
    log.close()
    node = node_factory(f"--data-dir={path}")
    node.init()
    got = node.call_ok({"type": "wal_read", "offset": 2})
    fields = ("offset", "payload", "checksum_valid", "epoch_start")
    assert {k: got.get(k) for k in fields} == dict(zip(fields, (2, "", True, 5), strict=True))
    assert "epoch_start" not in node.call_ok({"type": "wal_read", "offset": 1})
    scanned = node.call_ok({"type": "wal_scan", "from_offset": 0, "max_entries": 10})["entries"]
    assert scanned == [
        {"offset": 0, "payload": "", "epoch_start": 3},
        {"offset": 1, "payload": "set a=1"},
        {"offset": 2, "payload": "", "epoch_start": 5},
        {"offset": 3, "payload": "set b=2"},
    ]
    assert node.call_ok({"type": "kv_get", "key": "b"})["value"] == "2"
    assert node.call_ok({"type": "wal_snapshot"})["snapshot_offset"] == 4
    assert node.call_ok({"type": "wal_append", "payload": "set c=3"})["offset"] == 4
    assert node.close() == 0
    snap, _ = snapshot.load_latest(os.path.join(path, "snapshots"))  # the graceful stop's
    assert snap is not None and snap.offset == 5
    assert snap.state == {"a": "1", "b": "2", "c": "3"}
    assert snap.epoch is None  # a single node (no EPOCHS file): the snapshot format as before


def test_walctl_verify_names_a_damaged_epochs_file(tmp_path):
    path = str(tmp_path)
    store = open_store(path)
    store.append(entries(0, 2, 3, start_record=True))
    store.sync()
    store.close()
    ok = subprocess.run([sys.executable, "-m", "walctl", "verify", path], cwd=ROOT)
    assert ok.returncode == 0
    with open(os.path.join(path, "wal", "EPOCHS"), "w") as f:
        f.write("2 zero\n")
    bad = subprocess.run(
        [sys.executable, "-m", "walctl", "verify", path], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 3 and "EPOCHS" in bad.stdout and "line 1" in bad.stdout, bad.stdout


def test_the_compactor_writes_a_replicas_snapshot_with_its_last_entrys_epoch(
    tmp_path, node_factory
):
    """In a data directory with EPOCHS (a replica's), the real compactor's snapshot is version 3
    with the epoch of its last entry, and the store reads that position back."""
    path = str(tmp_path / "data")
    store = open_store(path)
    store.append(entries(0, 3, 2, start_record=True) + entries(3, 8, 2, start_record=True))
    store.sync()
    store.close()
    node = node_factory(f"--data-dir={path}")
    node.init()
    assert node.call_ok({"type": "wal_snapshot"})["snapshot_offset"] == 6
    assert node.close() == 0
    snap, _ = snapshot.load_latest(os.path.join(path, "snapshots"))
    assert snap is not None and snap.epoch == 8
    with open(snap.path, "rb") as f:
        assert f.read(8) == b"WNSNAP\x00\x03"
    store = open_store(path)
    assert store.snapshot() == Snapshot(
        Position(8, 5),
        {"state": {"k1": "e3", "k2": "e3", "k4": "e8", "k5": "e8"}, "damaged": [], "rewritten": []},
    )
    store.close()
