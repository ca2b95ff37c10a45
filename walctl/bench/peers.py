"""The same appends against other stores and against the bare disk.

Every peer appends the same ~100-byte payloads as the walnode driver, in a
fresh directory on the same file system as walnode's data, each append
durable before the next one starts:

- sqlite3: WAL journal mode, synchronous=FULL, one INSERT and one COMMIT per
  append;
- rocksdict (RocksDB): one put per append with WriteOptions.sync = True;
- lmdb: one write transaction per append, sync=True (the default);
- raw: a Python loop of os.write(record) + os.fdatasync, the cost of one
  durable append with nothing around it;
- ceiling: `batch` records joined into one os.write + one os.fdatasync, what
  a perfect group commit of that many requests could reach on this disk.

The embedded stores are measured one append at a time: each commit blocks
its caller until it is durable, none of them shares an fsync between
callers of one Python process (sqlite3 and lmdb take a single writer lock;
rocksdict holds the GIL through a put, so threads add nothing: measured,
see docs/BENCHMARKS.md). "In flight" is 1 for them.
"""

from __future__ import annotations

import array
import os
import shutil
import time
from collections.abc import Callable

from wal import record
from walctl.bench.appends import PAYLOAD_BYTES, payload

PEERS = ("sqlite", "rocksdict", "lmdb", "raw", "ceiling")
LABELS = {
    "sqlite": "sqlite3 (WAL, synchronous=FULL)",
    "rocksdict": "rocksdict (sync writes)",
    "lmdb": "lmdb (sync=True)",
    "raw": "raw write+fdatasync",
    "ceiling": "ceiling: one write+fdatasync",
}
INSTALL_HINT = "not installed: pip install 'walnode[bench]'"


def _payloads() -> list[bytes]:
    return [payload(i).encode() for i in range(1000)]


def timed_loop(op: Callable[[int], None], seconds: float, warmup: float) -> dict:
    """Run `op(i)` back to back: warm-up, then `seconds` measured, one
    latency per call."""
    perf = time.perf_counter
    i = 0
    t_end = perf() + warmup
    while perf() < t_end:
        op(i)
        i += 1
    lat = array.array("d")
    t0 = perf()
    t_end = t0 + seconds
    now = t0
    while now < t_end:
        op(i)
        i += 1
        t = perf()
        lat.append(t - now)
        now = t
    return {"count": len(lat), "elapsed": now - t0, "latencies": lat}


def _result(name: str, in_flight: int, run: dict, per_op: int = 1) -> dict:
    return {
        "name": name,
        "label": LABELS[name],
        "in_flight": in_flight,
        "appends": run["count"] * per_op,
        "appends_per_sec": run["count"] * per_op / run["elapsed"],
        "latencies": run["latencies"],
        "note": "",
    }


def missing(name: str, in_flight: int = 1) -> dict:
    return {
        "name": name,
        "label": LABELS[name],
        "in_flight": in_flight,
        "appends": 0,
        "appends_per_sec": None,
        "latencies": array.array("d"),
        "note": INSTALL_HINT,
    }


def raw(directory: str, seconds: float, warmup: float) -> dict:
    data = [record.encode(p)[0] for p in _payloads()]
    fd = os.open(os.path.join(directory, "raw.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    write, fdatasync = os.write, os.fdatasync

    def op(i: int) -> None:
        write(fd, data[i % 1000])
        fdatasync(fd)

    try:
        return _result("raw", 1, timed_loop(op, seconds, warmup))
    finally:
        os.close(fd)


def ceiling(directory: str, seconds: float, warmup: float, batch: int) -> dict:
    """`batch` records in one write and one fdatasync; every record of a
    batch waits the whole batch, so the batch time is each one's latency."""
    records = [record.encode(p)[0] for p in _payloads()]
    blobs = [b"".join(records[(j + k) % 1000] for k in range(batch)) for j in range(0, 1000, 97)]
    path = os.path.join(directory, f"ceiling-{batch}.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    write, fdatasync = os.write, os.fdatasync

    def op(i: int) -> None:
        blob = blobs[i % len(blobs)]
        view = memoryview(blob)
        while view:
            view = view[write(fd, view) :]
        fdatasync(fd)

    try:
        return _result("ceiling", batch, timed_loop(op, seconds, warmup), per_op=batch)
    finally:
        os.close(fd)
        os.remove(path)


def sqlite(directory: str, seconds: float, warmup: float) -> dict:
    import sqlite3

    path = os.path.join(directory, "sqlite.db")
    conn = sqlite3.connect(path, isolation_level=None)  # explicit transactions
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"sqlite3 would not switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE log (offset INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        payloads = _payloads()
        execute = conn.execute

        def op(i: int) -> None:
            execute("BEGIN")
            execute("INSERT INTO log VALUES (?, ?)", (i, payloads[i % 1000]))
            execute("COMMIT")

        return _result("sqlite", 1, timed_loop(op, seconds, warmup))
    finally:
        conn.close()


def rocksdict_peer(directory: str, seconds: float, warmup: float) -> dict:
    try:
        from rocksdict import Options, Rdict, WriteOptions
    except ImportError:
        return missing("rocksdict")
    path = os.path.join(directory, "rocksdb")
    db = Rdict(path, Options(raw_mode=True))
    try:
        options = WriteOptions()
        options.sync = True
        db.set_write_options(options)
        payloads = _payloads()

        def op(i: int) -> None:
            db[i.to_bytes(8, "big")] = payloads[i % 1000]

        return _result("rocksdict", 1, timed_loop(op, seconds, warmup))
    finally:
        db.close()


def lmdb_peer(directory: str, seconds: float, warmup: float) -> dict:
    try:
        import lmdb
    except ImportError:
        return missing("lmdb")
    env = lmdb.open(os.path.join(directory, "lmdb"), map_size=4 << 30, sync=True, metasync=True)
    try:
        payloads = _payloads()
        begin = env.begin

        def op(i: int) -> None:
            with begin(write=True) as txn:
                txn.put(i.to_bytes(8, "big"), payloads[i % 1000])

        return _result("lmdb", 1, timed_loop(op, seconds, warmup))
    finally:
        env.close()


ONE_AT_A_TIME = {"sqlite": sqlite, "rocksdict": rocksdict_peer, "lmdb": lmdb_peer, "raw": raw}


def run_peer(name: str, directory: str, seconds: float, warmup: float, batch: int = 1) -> dict:
    """One peer in a fresh subdirectory of `directory`, removed afterwards."""
    sub = os.path.join(directory, f"peer-{name}-{batch}")
    os.makedirs(sub)
    try:
        if name == "ceiling":
            return ceiling(sub, seconds, warmup, batch)
        return ONE_AT_A_TIME[name](sub, seconds, warmup)
    finally:
        shutil.rmtree(sub, ignore_errors=True)


assert PAYLOAD_BYTES == len(payload(0).encode())
