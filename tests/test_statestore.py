"""The compactor's state store (wal/statestore.py, DIR/state/state.sqlite).

A restart (a kill -9 or a graceful stop) opens the store and replays only
the log after the offset committed with it; a store that is missing,
damaged, or stands on a log position the log no longer has is rebuilt
from the newest snapshot and the log, never served. What the store holds
is read back through kv_get from the real node.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3

import pytest

from tests.damage import flip_byte
from tests.nodeproc import Node, wait_until
from tests.test_compactor import fold, pipeline, take_snapshot, values
from tests.test_rot import HEADER_SIZE, RECORD, fill, kv, seg
from tests.test_rot import start as start_rot
from wal import DataDir, Log, snapshot, statestore
from wal.statestore import Changes, Mark, StateStore

NO_AUTO = ("--no-auto-compact",)


def store_file(data_dir: str) -> str:
    return os.path.join(data_dir, "state", "state.sqlite")


def store_offset(data_dir: str) -> int | None:
    """The applied offset committed in the store, read as sqlite has it."""
    try:
        conn = sqlite3.connect(f"file:{store_file(data_dir)}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        sql = "SELECT value FROM meta WHERE name = 'applied_offset'"
        return conn.execute(sql).fetchone()[0]
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def kill_compactor(node) -> dict:
    """kill -9 the compactor; its successor's recovery, once it is ready."""
    old = node.pids()["compactor"]
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: node.restarted("compactor", old), timeout=20)
    return node.status()["recoveries"]["compactor"]


def test_a_kill_replays_only_the_log_after_the_store(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir, *NO_AUTO)
    node.init()
    payloads = [f"set k{i % 50}=v{i}" if i % 7 else f"del k{i % 50}" for i in range(3000)]
    pipeline(node, payloads)
    assert wait_until(lambda: store_offset(data_dir) == 3000, timeout=10)  # a periodic commit
    more = [f"set k{i % 60}=w{i}" for i in range(3000, 3100)] + ["del k3", "del k55"]
    pipeline(node, more)
    recovery = kill_compactor(node)
    assert recovery["store_rebuilt"] is None, recovery
    stored, replayed = recovery["store_offset"], recovery["entries_recovered"]
    # only what the store had not committed yet (a commit may have come before the kill)
    assert 3000 <= stored <= 3102 and stored + replayed == recovery["next_offset"] == 3102
    assert replayed <= 102, recovery
    keys = [f"k{i}" for i in range(60)]
    assert values(node, keys) == {k: fold(payloads + more).get(k) for k in keys}
    assert node.close() == 0

    node = node_factory("--data-dir", data_dir, *NO_AUTO)  # the stop committed it all
    node.init()
    recovery = node.status()["recoveries"]["compactor"]
    assert (recovery["store_offset"], recovery["entries_recovered"]) == (3102, 0), recovery
    assert values(node, keys) == {k: fold(payloads + more).get(k) for k in keys}


def test_damaged_offsets_and_certain_keys_are_kept_in_the_store(node_factory, data_dir):
    fill(node_factory, data_dir)  # 60 entries, no snapshot, no store
    flip_byte(seg(data_dir, 0), 3 * RECORD + HEADER_SIZE + 5)  # offset 3 cannot be read
    node = start_rot(node_factory, data_dir)  # the store is built from the damaged log
    assert kv(node, "k01")["damaged_offsets"] == [3]
    assert node.call_ok({"type": "wal_append", "payload": "set k01=again"})["offset"] == 60
    assert node.close() == 0

    node = start_rot(node_factory, data_dir)
    recovery = node.status()["recoveries"]["compactor"]
    assert (recovery["store_offset"], recovery["entries_recovered"]) == (61, 0), recovery
    assert recovery["damaged_offsets"] == [3]
    assert kv(node, "k50")["value"] == "v50"  # set after the damage: certain, from the store
    assert kv(node, "k01")["value"] == "again"
    refused = kv(node, "k02")
    assert refused["code"] == 22 and refused["damaged_offsets"] == [3], refused
    assert node.call_ok({"type": "wal_append", "payload": "set k02=x"})["offset"] == 61
    recovery = kill_compactor(node)
    assert recovery["store_offset"] >= 61, recovery
    assert kv(node, "k02")["value"] == "x"
    assert kv(node, "k50")["value"] == "v50"
    assert kv(node, "k00")["damaged_offsets"] == [3]  # set before the damage


def build_snapshot_and_store(node_factory, data_dir) -> tuple[list[str], list[str]]:
    """A snapshot at 3000, the log to 3200, the store committed at 3200 (and the
    stop's snapshot at 3200 removed: a rebuild must replay the log after 3000)."""
    node = node_factory("--data-dir", data_dir, *NO_AUTO)
    node.init()
    first = [f"set k{i}=a{i}" for i in range(3000)]
    pipeline(node, first)
    assert take_snapshot(node)["snapshot_offset"] == 3000
    second = [f"set k{i}=b{i}" for i in range(150)] + [f"del k{i}" for i in range(150, 200)]
    pipeline(node, second)
    assert node.close() == 0
    assert store_offset(data_dir) == 3200
    os.remove(os.path.join(data_dir, "snapshots", f"{3200:020d}.snap"))
    return first, second


def remove_store(path: str) -> None:
    os.remove(path)


def garbage_store(path: str) -> None:
    with open(path, "r+b") as f:
        f.write(b"this is not an sqlite database, whatever it once was" * 4)


def garbage_pages(path: str) -> None:
    """Its last pages (the state's newest leaves) overwritten: the store opens,
    its mark holds, and sqlite finds the damage only when kv_get reads there."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - 3 * 4096)
        f.write(b"\xa5" * 3 * 4096)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[str, list[str], list[str]]:
    """build_snapshot_and_store once for the module; each test damages a copy."""
    path = os.fspath(tmp_path_factory.mktemp("built") / "data")
    started: list[Node] = []

    def start(*args: str) -> Node:
        started.append(Node(*args))
        return started[-1]

    try:
        first, second = build_snapshot_and_store(start, path)
    finally:
        for node in started:
            node.kill()
    return path, first, second


@pytest.mark.parametrize("damage", [remove_store, garbage_store, garbage_pages])
def test_a_missing_or_damaged_store_is_rebuilt(node_factory, data_dir, damage, built):
    source, first, second = built
    shutil.copytree(source, data_dir)
    damage(store_file(data_dir))
    node = node_factory("--data-dir", data_dir, *NO_AUTO)
    node.init()
    keys = [f"k{i}" for i in range(0, 3000, 41)] + [f"k{i}" for i in range(140, 210)]
    assert values(node, keys) == {k: fold(first + second).get(k) for k in keys}
    recovery = node.status()["recoveries"]["compactor"]
    if damage is garbage_pages:  # met by a kv_get, rebuilt there (and that kv_get answered)
        assert recovery["store_rebuilt"] is None, recovery
        assert "is damaged: database disk image is malformed" in node.stderr_text()
        assert "rebuilding it from the newest snapshot and the log" in node.stderr_text()
    else:
        assert recovery["store_rebuilt"], recovery
        assert (recovery["snapshot_offset"], recovery["entries_recovered"]) == (3000, 200)
    assert node.close() == 0
    node = node_factory("--data-dir", data_dir, *NO_AUTO)  # rebuilt durably: used again
    node.init()
    recovery = node.status()["recoveries"]["compactor"]
    assert (recovery["store_rebuilt"], recovery["entries_recovered"]) == (None, 0), recovery
    assert values(node, keys) == {k: fold(first + second).get(k) for k in keys}


@pytest.mark.parametrize("reappend", [False, True], ids=["cut", "cut-and-rewritten"])
def test_a_log_cut_under_the_store_is_detected(node_factory, data_dir, reappend):
    """The store stands at 100; the log is cut to 60 (what walctl repair or a
    replica's truncate_from can do), and maybe written on to 100 again with
    other entries: the store no longer matches, and is rebuilt from the log."""
    node = node_factory("--data-dir", data_dir, *NO_AUTO)
    node.init()
    payloads = [f"set k{i % 10}=v{i}" for i in range(100)]
    pipeline(node, payloads)
    assert node.close() == 0
    assert store_offset(data_dir) == 100
    for name in os.listdir(os.path.join(data_dir, "snapshots")):
        os.remove(os.path.join(data_dir, "snapshots", name))
    other = [f"set k{i % 10}=other{i}" for i in range(60, 100)] if reappend else []
    lg, _ = Log.open(DataDir(data_dir).wal_dir)
    lg.truncate_from(60)
    for p in other:
        lg.append(p.encode())
    lg.sync()
    lg.close()

    node = node_factory("--data-dir", data_dir, *NO_AUTO)
    node.init()
    keys = [f"k{i}" for i in range(10)]
    assert values(node, keys) == {k: fold(payloads[:60] + other).get(k) for k in keys}
    recovery = node.status()["recoveries"]["compactor"]
    why = "is not the one it applied" if reappend else "the log has no entry 99"
    assert why in recovery["store_rebuilt"], recovery
    assert recovery["entries_recovered"] == 60 + len(other)


def test_a_store_behind_the_newest_snapshot_replays_the_log(node_factory, data_dir):
    """What a power cut can leave of the store: an earlier commit (sqlite's
    atomic commit: never a mix), behind the newest snapshot. The power-loss
    model (wal/powerloss.py) sees only writes made through Python's os
    module, not sqlite's, so the earlier commit is made here by copying the
    store's files at one commit and putting them back after later ones."""
    node = node_factory("--data-dir", data_dir, *NO_AUTO)
    node.init()
    first = [f"set k{i % 40}=a{i}" for i in range(500)]
    pipeline(node, first)
    assert node.close() == 0  # the store at 500, its WAL checkpointed into the file
    with open(store_file(data_dir), "rb") as f:
        older = f.read()
    node = node_factory("--data-dir", data_dir, *NO_AUTO)
    node.init()
    second = [f"set k{i % 50}=b{i}" for i in range(500, 800)] + ["del k1", "del k45"]
    pipeline(node, second)
    assert node.close() == 0  # the store and a snapshot at 802
    with open(store_file(data_dir), "wb") as f:
        f.write(older)
    node = node_factory("--data-dir", data_dir, *NO_AUTO)
    node.init()
    recovery = node.status()["recoveries"]["compactor"]
    assert recovery["snapshot_offset"] == 802 and recovery["store_rebuilt"] is None, recovery
    assert (recovery["store_offset"], recovery["entries_recovered"]) == (500, 302), recovery
    keys = [f"k{i}" for i in range(50)]
    assert values(node, keys) == {k: fold(first + second).get(k) for k in keys}


def test_the_store_commits_only_durable_entries(node_factory, data_dir):
    """Under --fsync never a kv_get applies entries not yet durable; the store
    must not commit them (a power cut could take them from the log and leave
    their effects in the store) until a wal_sync makes them durable."""
    node = node_factory("--data-dir", data_dir, *NO_AUTO, "--fsync", "never")
    node.init()
    pipeline(node, [f"set k{i}=v{i}" for i in range(10)])
    assert kv(node, "k9")["value"] == "v9"  # applied, in memory
    assert not wait_until(lambda: (store_offset(data_dir) or 0) > 0, timeout=2.5)
    node.call_ok({"type": "wal_sync"})
    assert wait_until(lambda: store_offset(data_dir) == 10, timeout=10)


@pytest.mark.parametrize(
    ("needle", "at", "byte"),
    [(b"value-000457", 11, b"9"), (b"key7", 2, b"z")],
    ids=["value", "key"],
)
def test_rot_in_the_store_never_changes_a_kv_get_answer(node_factory, data_dir, needle, at, byte):
    """Tester's T1: sqlite pages carry no checksum; one byte of rot in a value
    (value-000457 -> value-000459) or a key (key7 -> kez7) of the store, log
    and snapshots intact, was served. Every row carries a CRC now: the rot is
    met by the read and the store rebuilt, so kv_get answers the acknowledged
    value."""
    node = node_factory("--data-dir", data_dir)
    node.init()
    pipeline(node, [f"set key{i % 50}=value-{i:06d}" for i in range(500)])
    assert node.close() == 0
    rotted = 0
    for name in os.listdir(os.path.join(data_dir, "state")):
        with open(os.path.join(data_dir, "state", name), "r+b") as f:
            data = f.read()
            if (found := data.find(needle)) >= 0:
                f.seek(found + at)
                f.write(byte)
                rotted += 1
    assert rotted
    node = node_factory("--data-dir", data_dir)
    node.init()
    assert node.call_ok({"type": "kv_get", "key": "key7"})["value"] == "value-000457"
    assert "fails its CRC" in node.stderr_text()


# -- the state in memory beside the table (StateStore.mirror) ------------------


def table(store: StateStore) -> dict[str, str]:
    """The kv table as sqlite has it, read on a connection of its own."""
    conn = sqlite3.connect(store.path)
    try:
        return dict(conn.execute("SELECT key, value FROM kv"))
    finally:
        conn.close()


def whole(store: StateStore) -> dict[str, str]:
    return {k: v for chunk in store.chunks() for k, v in dict(chunk).items()}


def kv_reads(store: StateStore) -> list[str]:
    """The statements that read the kv table from now on (sqlite's trace)."""
    seen: list[str] = []

    def trace(sql: str) -> None:
        if "SELECT key, value" in sql:
            seen.append(sql)

    store.conn.set_trace_callback(trace)
    return seen


def commit(store: StateStore, values: dict[str, str | None], offset: int) -> None:
    store.commit(Changes(values, set(), False, [], Mark(offset, 1)))


def test_a_whole_read_after_the_first_comes_from_memory_and_equals_the_table(tmp_path):
    """The snapshot's read (chunks) builds the mirror once; every commit after
    it (sets, overwrites, deletes, a key deleted that was never set) keeps it
    equal to the table, and the next whole reads run no SELECT on kv. On the
    code before the mirror every whole read read the table back."""
    store = StateStore.open(os.fspath(tmp_path / "state"))
    commit(store, {f"k{i}": f"a{i}" for i in range(300)}, 300)
    reads = kv_reads(store)
    assert whole(store) == table(store)
    assert len(reads) == 1  # the first whole read is the table's
    changes: dict[str, str | None] = {f"k{i}": f"b{i}" for i in range(0, 300, 3)}
    changes |= {f"k{i}": None for i in range(1, 300, 3)} | {"new": "n", "never": None}
    commit(store, changes, 400)
    commit(store, {"k1": "back", "new": None}, 410)
    reads.clear()
    assert whole(store) == table(store) == store.mirror
    assert store.mirror["k1"] == "back" and "k4" not in store.mirror and "new" not in store.mirror
    assert reads == []
    store.replace([("only", "one")], [], [], Mark(500, 1))  # a snapshot loaded: read again
    assert whole(store) == {"only": "one"} == table(store)
    assert len(reads) == 1
    store.close()


@pytest.mark.parametrize("bound", ["MIRROR_MAX_KEYS", "MIRROR_MAX_CHARS"])
def test_the_mirror_is_dropped_once_the_state_outgrows_it(tmp_path, monkeypatch, bound):
    """Over MIRROR_MAX_KEYS keys or MIRROR_MAX_CHARS characters the state is
    read from the table again, not held: built under the bound, dropped by
    the commit that passes it, not built by a read over it."""
    monkeypatch.setattr(statestore, bound, 40 if bound == "MIRROR_MAX_KEYS" else 40 * 8)
    store = StateStore.open(os.fspath(tmp_path / "state"))
    commit(store, {f"k{i:02d}": "v" * 5 for i in range(30)}, 30)  # 30 keys, 240 characters
    assert whole(store) == table(store) and store.mirror is not None
    commit(store, {f"k{i:02d}": "v" * 5 for i in range(30, 45)}, 45)  # 45 keys, 360
    assert store.mirror is None
    reads = kv_reads(store)
    assert whole(store) == table(store) and store.mirror is None
    assert len(reads) == 1
    commit(store, {f"k{i:02d}": None for i in range(20)}, 65)  # under the bound again
    assert whole(store) == table(store) and store.mirror is not None
    store.close()


def test_every_snapshot_holds_the_state_after_sets_deletes_and_a_compactor_kill(
    node_factory, data_dir
):
    """Snapshots through a real node, each after overwrites and deletes, one
    after a kill -9 of the compactor (its successor reads the table again):
    each snapshot file holds exactly the state the appends fold to."""
    node = node_factory("--data-dir", data_dir, *NO_AUTO)
    node.init()
    payloads: list[str] = []
    for rnd in range(5):
        batch = [f"set k{i}=r{rnd}-{i}" for i in range(rnd, 400, rnd + 1)]
        batch += [f"del k{i}" for i in range(rnd * 7, 400, 11)] + ["del never-set"]
        pipeline(node, batch)
        payloads += batch
        if rnd == 2:
            kill_compactor(node)
        snap = take_snapshot(node)
        assert snap["snapshot_offset"] == len(payloads)
        path = os.path.join(data_dir, "snapshots", f"{len(payloads):020d}.snap")
        with open(path, "rb") as f:
            offset, state, _, _ = snapshot.decode_all(f.read())
        assert (offset, state) == (len(payloads), fold(payloads)), rnd
        assert values(node, ["k1", "k7", "k12"]) == {
            k: fold(payloads).get(k) for k in ["k1", "k7", "k12"]
        }
