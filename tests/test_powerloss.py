"""Power loss, simulated: a disk that keeps each file's and each directory's
unsynced changes on its own, cut at every sync of a real workload.

One real walnode (supervisor, writer, compactor, front) runs a workload of
appends, snapshots and compactions, with segments rolling every 6 KiB, and
every file-system change it makes traced (wal/fstrace.py). The test writes
an `ack` record into the same trace as each wal_append_ok arrives, so a cut
at any point of the trace knows exactly which entries had been acknowledged
by then. wal/powerloss.py replays the trace into a disk model (per file a
prefix of its unsynced writes, page by page, the last page possibly torn;
per directory a prefix of its entry changes; each on its own). Power is cut
right before every sync of the trace, in the model's corner cases and a
random mix, and at random points between. Each cut is checked:

- `walctl verify` (in this process, its real code) and `Log.open` give the
  same verdict, and `Log.open` never refuses: no start needs a repair;
- every acknowledged entry is there and every retained entry is exactly
  what was written at its offset; snapshot + log rebuild the state machine;
- `walctl verify` exits 0 on what start-up left.

A handful of cuts also start the real node on what the disk kept.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shutil
import tempfile
import time

import msgpack
import pytest

from tests.nodeproc import Node
from wal import DataDir, Log, index, powerloss, snapshot
from wal.errors import CorruptionError, WalError
from wal.fstrace import ROOT_ENV, TRACE_ENV
from wal.prefill import PREPARED_NAME
from wal.segment import segment_name
from wal.statemachine import StateMachine
from walctl import cli as walctl_cli

SEED = int(os.environ.get("WALNODE_POWERLOSS_SEED", "20261122"))
SEGMENT_BYTES = 6 * 1024
APPENDS = 2000
RANDOM_CUTS = 400  # at least; more if the syncs give fewer than MIN_CUTS
MIN_CUTS = 2000
NODE_STARTS = 4
NODE_FLAGS = [
    f"--max-segment-bytes={SEGMENT_BYTES}",
    "--snapshot-every=300",
    "--keep-entries=100",
    "--keep-snapshots=2",
]
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None  # cuts are written out there


def payload(i: int) -> str:
    # Keys repeat, so the state machine's final value depends on the order;
    # ~100 bytes, so a batch crosses 4 KiB pages and a segment holds ~60.
    return f"set k{i % 97}=v{i}-" + "x" * 80


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
            if rng.random() < 0.05:
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


def verify_exit(root: str) -> int:
    """`walctl verify ROOT`'s exit status: its command run in this process
    (without building walctl's whole argument parser for each of 4000 calls)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return walctl_cli.cmd_verify(argparse.Namespace(dir=root))
    except CorruptionError:
        return 3  # as walctl.cli.main maps it
    except WalError:
        return 2


def expected_states(written: dict[int, str]) -> list[dict]:
    """The state machine after entries 0..n-1, for every n."""
    sm, states = StateMachine(), [{}]
    for o in range(len(written)):
        sm.apply(written[o])
        states.append(dict(sm.state))
    return states


def check_recovery(root: str, written: dict[int, str], acked: set[int], states: list) -> None:
    """Recover `root` as the writer and compactor do at start, and check it."""
    before = verify_exit(root)
    # 2: no wal/ yet ("not a walnode data directory"), before its mkdir was durable
    fresh = before == 2 and not os.path.isdir(os.path.join(root, "wal")) and not acked
    DataDir(root, create=False).read_meta()  # replaced atomically: never torn
    assert_indexes_match(os.path.join(root, "wal"))
    try:
        wal, _ = Log.open(os.path.join(root, "wal"), max_segment_bytes=SEGMENT_BYTES)
    except CorruptionError as err:
        raise AssertionError(f"start refused (walctl verify exit {before}): {err}") from err
    assert before == 0 or fresh, f"walctl verify exits {before} on what Log.open opens"
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
        assert sm.state == states[next_], "snapshot + log do not rebuild the state"
    finally:
        wal.close()
    assert verify_exit(root) == 0, "walctl verify calls corrupt what start-up left"


def assert_indexes_match(wal: str) -> None:
    """A sealed segment is cut to its records (its preallocated zeros gone)
    durably before its index is written: an index on disk always matches its
    segment's size, never one the cut did not reach."""
    if not os.path.isdir(wal):
        return
    for name in os.listdir(wal):
        base = index.parse_name(name)
        segment = os.path.join(wal, segment_name(base)) if base is not None else ""
        if base is not None and os.path.exists(segment):
            loaded = index.load(os.path.join(wal, name), base, os.path.getsize(segment))
            assert loaded is not None, f"{name} does not match {segment_name(base)}'s size"
            loaded.close()


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


def traced_workload(tmp_path, node_factory, rng: random.Random) -> tuple[str, list, dict]:
    root = tmp_path / "data"
    root.mkdir()
    trace = tmp_path / "trace"
    trace.touch()
    node = node_factory(
        f"--data-dir={root}", *NODE_FLAGS, env={TRACE_ENV: str(trace), ROOT_ENV: str(root)}
    )
    node.init()
    written = run_workload(node, str(trace), APPENDS, rng)
    assert node.close() == 0
    records = powerloss.read_trace(str(trace))
    disk = powerloss.Disk(str(root))
    for r in records:
        disk.apply(r)

    # The trace is complete: replayed, it gives the directory as it really is,
    # but for the compactor's state store, which sqlite writes (not through
    # Python's os module: the model never sees it; in the cut directories the
    # store is absent and is rebuilt, docs/FORMAT.md "The state store")
    def outside_store(tree: dict) -> dict:
        return {k: v for k, v in tree.items() if not k.startswith("state/")}

    assert outside_store(disk.live_state()) == outside_store(powerloss.read_tree(str(root)))
    kinds = {r[0] for r in records}
    assert {"write", "sync", "rename", "unlink", "mkdir", "truncate", "ack"} <= kinds
    assert_syncs_change_no_size(records, str(root))
    return str(root), records, written


def assert_syncs_change_no_size(records: list, root: str) -> None:
    """Preallocation: every record a segment's sync makes durable was written
    inside zeros already durable (the file's durable size covers it), so the
    fdatasync changes no size or extent; the zero-filling writes themselves
    (only zeros) are what extends a segment. Most segments are prepared files
    renamed in (wal/prefill.py): the cuts above fall at every step of that
    too (the fill, its fsyncs, the rename, the directory fsync)."""
    disk = powerloss.Disk(root)
    prefilled = renamed = 0
    for r in records:
        if r[0] == "sync" and _name_of(disk, disk.fds[(r[1], r[2])]).endswith(".log"):
            f = disk.files[disk.fds[(r[1], r[2])][1]]
            for op in f.pending:
                if op[0] == "write" and any(op[2]):
                    assert op[1] + len(op[2]) <= len(f.durable), (
                        f"a sync of {_name_of(disk, disk.fds[(r[1], r[2])])} makes records "
                        f"durable past its durable size {len(f.durable)} (byte {op[1]}): "
                        f"not preallocated"
                    )
        elif r[0] == "write" and not any(r[4]):
            prefilled += 1
        elif r[0] == "rename" and os.path.basename(r[2]) == PREPARED_NAME:
            renamed += 1
        disk.apply(r)
    assert prefilled, "no segment was zero-filled ahead of its records"
    assert renamed, "no roll took a prepared segment"


def _name_of(disk: powerloss.Disk, node: powerloss.Node) -> str:
    """A file's name now (a prepared file is renamed to its segment's)."""
    for d in disk.dirs.values():
        for name, held in d.names.items():
            if held == node:
                return name
    return ""


@pytest.mark.timeout(240)
def test_no_acknowledged_entry_is_lost_at_any_sync_of_a_per_file_disk(tmp_path, node_factory):
    rng = random.Random(SEED)
    t0 = time.monotonic()
    root, records, written = traced_workload(tmp_path, node_factory, rng)
    traced_s = time.monotonic() - t0
    syncs = [i for i, r in enumerate(records) if r[0] == "sync"]
    fs_events = [i for i, r in enumerate(records) if r[0] not in ("ack", "sync")]
    wanted = max(RANDOM_CUTS, MIN_CUTS - 4 * len(syncs))  # however many syncs the run had
    random_points = set(rng.sample(fs_events, min(wanted, len(fs_events))))
    node_cuts = set(rng.sample(syncs, NODE_STARTS))
    disk = powerloss.Disk(root)
    states = expected_states(written)
    acked: set[int] = set()
    scratch = tempfile.mkdtemp(prefix="walnode-cuts-", dir=SCRATCH)
    cuts = 0
    hows: dict[str, int] = {}
    try:
        for i, r in enumerate(records):
            if r[0] == "ack":
                acked.add(r[1])
                continue
            keeps = []
            if r[0] == "sync":  # the most a cut can lose: everything since the last sync
                keeps = [*disk.extremes(), powerloss.random_keep(disk, rng)]
            elif i in random_points:
                keeps = [powerloss.random_keep(disk, rng)]
            for n, keep in enumerate(keeps):
                dest = os.path.join(scratch, f"cut{i}-{n}")
                powerloss.materialize(disk.crash_state(keep), dest)
                try:
                    check_recovery(dest, written, acked, states)
                    if i in node_cuts and n == 1:  # the per-file corner, on the real node
                        check_node_serves(node_factory, dest, written, acked)
                except Exception as err:
                    raise AssertionError(
                        f"power cut before trace record {i} ({r[0]}; {keep.how}; "
                        f"seed {SEED}): {err}"
                    ) from err
                shutil.rmtree(dest)
                cuts += 1
                hows[keep.how] = hows.get(keep.how, 0) + 1
            disk.apply(r)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{cuts} cuts {hows}; traced in {traced_s:.1f} s, all in {time.monotonic() - t0:.1f} s")
    assert cuts >= MIN_CUTS and len(acked) == APPENDS
    assert len(syncs) * 4 + len(random_points) == cuts  # every sync boundary was cut


def test_the_model_loses_what_was_not_fsynced(tmp_path):
    """The model itself: unsynced data and directory entries are gone after a
    cut, synced ones stay, a file keeps a prefix of its writes page by page
    (the last page torn), and files and directories are kept on their own."""
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
    assert disk.crash_state(powerloss.Keep(files={0: (1, 3)})) == {"a.log": b"hello wo"}
    disk.apply(["rename", 1, seg, seg + ".old"])
    assert disk.crash_state() == {"a.log": b"hello"}
    assert disk.crash_state(powerloss.Keep({0: (1, None)}, {root: 1})) == {
        "a.log.old": b"hello world"
    }
    assert disk.live_state() == {"a.log.old": b"hello world"}

    # page by page: the first write pending, then 10000 bytes from byte 11, split at 4096, 8192
    disk.apply(["write", 1, 3, 11, b"p" * 10000])
    assert [len(u[2]) for u in disk.files[0].units()] == [6, 4085, 4096, 1819]
    kept = disk.crash_state(powerloss.Keep({0: (3, 100)}, {root: 1}))["a.log.old"]
    assert kept == b"hello world" + b"p" * (4085 + 100)

    # a new file's entry durable while the old file's unsynced tail is gone
    new = os.path.join(root, "b.log")
    disk.apply(["open", 1, 5, new, os.O_RDWR | os.O_CREAT])
    corner = {k.how: disk.crash_state(k) for k in disk.extremes()}
    assert corner["directories kept, file data lost"] == {"a.log.old": b"hello", "b.log": b""}
    assert corner["file data kept, directories lost"] == {"a.log": disk.files[0].data}
    rng = random.Random(1)
    seen = {tuple(sorted(disk.crash_state(powerloss.random_keep(disk, rng)))) for _ in range(60)}
    assert ("a.log.old", "b.log") in seen and ("a.log",) in seen
