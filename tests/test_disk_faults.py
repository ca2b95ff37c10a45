"""A full disk and a failing disk, through the real processes.

Disk full (ENOSPC) at write time is survivable: the appends that did not fit
get error 11 (definitely not written), nothing of them stays in any file,
and appends work again once space is back. A failed fsync or write (EIO) is
not: the writer exits without acknowledging, is restarted, and recovery
reads the truth from the files (never a retried fsync called success).

Faults are injected with WALNODE_FAULT_IO (wal/faults.py): while a switch
file exists, the named call fails on regular files. One test fills a real
tmpfs instead, where mounting one is allowed.
"""

from __future__ import annotations

import errno
import glob
import os
import subprocess

import pytest

from actors import messages as m
from actors.codes import Code
from actors.writer import FsyncPolicy, Writer
from tests.nodeproc import Node, walctl
from wal import DataDir, Log


def append_many(node: Node, payloads: list[str]) -> list[dict]:
    """Pipeline appends; return their reply bodies in request order."""
    ids = [node.send({"type": "wal_append", "payload": p}) for p in payloads]
    return [node.reply_to(i)["body"] for i in ids]


def faulty_node(node_factory, data_dir: str, fault: str, switch, *flags: str) -> Node:
    """An initialised node whose `fault` (call:ERRNO) strikes while `switch` exists."""
    env = {"WALNODE_FAULT_IO": f"{fault}:{switch}"}
    node = node_factory(f"--data-dir={data_dir}", *flags, env=env)
    node.init()
    return node


def assert_log_holds(node: Node, expected: list[str]) -> None:
    got = node.call_ok({"type": "wal_scan", "from_offset": 0, "max_entries": 10_000})
    assert [e["payload"] for e in got["entries"]] == expected
    assert got["next_offset"] == len(expected)


def test_fsync_benchmark_on_a_full_disk_is_error_11_and_leaves_nothing(
    node_factory, data_dir, tmp_path
):
    """The benchmark's scratch file cannot be written: definitely nothing
    happened (11, not 13's 'may or may not'), and no scratch file is left."""
    full = tmp_path / "disk-is-full"
    node = faulty_node(node_factory, data_dir, "write:ENOSPC", full)
    full.touch()
    body = node.call({"type": "fsync_benchmark", "entries": 5, "strategies": ["none"]})
    assert body["type"] == "error" and body["code"] == Code.TEMPORARILY_UNAVAILABLE, body
    assert "no space left" in body["text"] and "free space, then retry" in body["text"], body
    assert not glob.glob(os.path.join(data_dir, "fsync-benchmark-*")), "scratch file left"
    full.unlink()
    body = node.call_ok({"type": "fsync_benchmark", "entries": 5, "strategies": ["none"]})
    assert [r["strategy"] for r in body["results"]] == ["none"]


def test_disk_full_fails_appends_definitely_and_appends_resume(node_factory, data_dir, tmp_path):
    full = tmp_path / "disk-is-full"
    node = faulty_node(node_factory, data_dir, "write:ENOSPC", full, "--max-segment-bytes=600")
    before = [f"set a{i}={i}" for i in range(20)]
    assert [r["offset"] for r in append_many(node, before)] == list(range(20))
    writer_pid = node.pids()["writer"]

    full.touch()
    failed = append_many(node, [f"set lost{i}=x" for i in range(40)])
    assert {r["type"] for r in failed} == {"error"}
    assert {r["code"] for r in failed} == {11}, failed
    assert "disk full" in failed[0]["text"] and "free space" in failed[0]["text"]
    snap = node.call({"type": "wal_snapshot"})
    assert snap["type"] == "error" and snap["code"] == 11, snap
    # What the failed writes put in the files was cut off again.
    info = node.call_ok({"type": "wal_info"})
    on_disk = sum(os.path.getsize(p) for p in glob.glob(os.path.join(data_dir, "wal", "*.log")))
    assert info["next_offset"] == 20 and on_disk == info["total_bytes"]

    full.unlink()
    after = [f"set b{i}={i}" for i in range(25)]  # rolls segments again
    assert [r["offset"] for r in append_many(node, after)] == list(range(20, 45))
    assert node.pids()["writer"] == writer_pid, "a full disk must not cost a restart"
    assert_log_holds(node, before + after)
    assert node.close() == 0

    # Nothing of the failed appends is on disk: the files verify clean, and a
    # new node finds exactly the acknowledged entries.
    check = walctl("verify", data_dir)
    assert check.returncode == 0, check.stdout + check.stderr
    node = node_factory(f"--data-dir={data_dir}")
    node.init()
    assert_log_holds(node, before + after)
    assert node.close() == 0


def test_disk_full_then_killed_brings_back_nothing_it_refused(node_factory, data_dir, tmp_path):
    full = tmp_path / "disk-is-full"
    node = faulty_node(node_factory, data_dir, "write:ENOSPC", full)
    before = [f"set a{i}={i}" for i in range(5)]
    append_many(node, before)
    full.touch()
    refused = append_many(node, [f"set refused{i}=" + "x" * 50 for i in range(30)])
    assert {r["code"] for r in refused} == {11}
    node.kill()  # SIGKILL to the whole tree, the disk still full
    full.unlink()
    node = node_factory(f"--data-dir={data_dir}")
    node.init()
    assert_log_holds(node, before)  # error 11 is definite: not one of them came back
    assert node.close() == 0


def test_writer_fails_the_rest_of_a_batch_after_a_full_disk(tmp_path, monkeypatch):
    """In one group commit: an append fills the disk while a roll flushes the
    batch so far. Every append of the batch is refused, including one after
    it that would fit (it must not take the offset of a refused one)."""
    datadir = DataDir(str(tmp_path / "d"))
    datadir.lock("test writer")  # a writer checks the directory it locked after each commit
    wal, _ = Log.open(datadir.wal_dir, max_segment_bytes=100)
    writer = Writer(datadir, wal, FsyncPolicy.parse("always"))
    writer.handle([[1, m.OP_APPEND, b"set a=1"]])
    writer.commit()
    real_write, failures = os.write, [1]

    def write(fd: int, data: bytes) -> int:
        if failures and os.fstat(fd).st_size < 1000:
            failures.pop()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    replies = writer.handle(
        [[2, m.OP_APPEND, b"set b=2"], [3, m.OP_APPEND, b"x" * 80], [4, m.OP_APPEND, b"set c=3"]]
    )
    writer.commit()
    answers = [writer.answer(op, result) for _, op, result in replies]
    assert [a[0] for a in answers] == [11, 11, 11], answers
    assert wal.next_offset == 1 and wal.durable_offset == 1
    writer.disk_full_at = None  # the next batch, space is back
    replies = writer.handle([[5, m.OP_APPEND, b"set d=4"]])
    writer.commit()
    assert m.append_fields(writer.answer(*replies[0][1:])[1])["offset"] == 1
    wal.close()


def test_fsync_failure_is_never_retried_the_writer_restarts(node_factory, data_dir, tmp_path):
    broken = tmp_path / "disk-is-broken"
    node = faulty_node(node_factory, data_dir, "fdatasync:EIO", broken)
    acked = [f"set a{i}={i}" for i in range(10)]
    append_many(node, acked)
    writer_pid = node.pids()["writer"]

    broken.touch()
    held = append_many(node, [f"set maybe{i}=x" for i in range(5)])
    broken.unlink()
    assert all(r["type"] == "error" for r in held), held
    assert 13 in {r["code"] for r in held}, held  # may or may not be durable: never an ack
    assert "Input/output error" in node.stderr_text()

    assert node.call_ok({"type": "wal_append", "payload": "set after=1"})["offset"] >= 10
    assert node.pids()["writer"] != writer_pid
    scan = node.call_ok({"type": "wal_scan", "from_offset": 0, "max_entries": 100})
    assert [e["payload"] for e in scan["entries"][:10]] == acked
    assert node.close() == 0


def test_write_failure_leaves_a_tail_that_recovery_cuts(node_factory, data_dir, tmp_path):
    broken = tmp_path / "disk-is-broken"
    node = faulty_node(node_factory, data_dir, "write:EIO", broken)
    acked = [f"set a{i}={i}" for i in range(10)]
    append_many(node, acked)

    broken.touch()
    maybe = [f"set maybe{i}=" + "x" * 40 for i in range(5)]
    held = append_many(node, maybe)
    broken.unlink()
    assert {r["code"] for r in held} <= {11, 13} and 13 in {r["code"] for r in held}, held
    # The failed write left half a batch in the file (some whole records, then
    # a torn one): the next writer cuts the torn one and keeps the whole ones,
    # which error 13 allowed ("may or may not be durable").
    after = node.call_ok({"type": "wal_append", "payload": "set after=1"})
    assert "cut a torn tail" in node.stderr_text()
    kept = maybe[: after["offset"] - 10]
    assert len(kept) < len(maybe), "half a batch was written, not all of it"
    assert_log_holds(node, [*acked, *kept, "set after=1"])
    assert node.close() == 0


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_real_full_disk(node_factory, small_tmpfs):
    """A 2 MiB tmpfs, a 1 MiB file holding space, appends until it is full."""
    filler = small_tmpfs / "filler"
    filler.write_bytes(bytes(1 << 20))
    data_dir = str(small_tmpfs / "data")
    node = node_factory(f"--data-dir={data_dir}", "--max-segment-bytes=262144", "--no-auto-compact")
    node.init()
    acked: list[str] = []
    for batch in range(40):
        payloads = [f"set k{batch}_{i}=" + "x" * 60_000 for i in range(4)]
        replies = append_many(node, payloads)
        for p, r in zip(payloads, replies, strict=True):
            if r["type"] == "wal_append_ok":
                assert r["offset"] == len(acked)
                acked.append(p)
            else:
                assert r["code"] == 11 and "disk full" in r["text"], r
        if any(r["type"] == "error" for r in replies):
            break
    else:
        pytest.fail("the disk never filled up")
    # The first error 11 may have freed the prepared next segment (wal/prefill.py):
    # a few appends can fit again, then the disk is full again, and stays so.
    for i in range(8):
        late = f"set late{i}=" + "x" * 60_000
        reply = append_many(node, [late])[0]
        if reply["type"] == "error":
            assert reply["code"] == 11 and "disk full" in reply["text"], reply
            break
        assert reply["offset"] == len(acked)
        acked.append(late)
    else:
        pytest.fail("the disk did not fill up again")
    assert append_many(node, ["set later=" + "x" * 60_000])[0]["code"] == 11

    filler.unlink()  # space is back
    more = [f"set more{i}=" + "y" * 60_000 for i in range(4)]
    assert [r["offset"] for r in append_many(node, more)] == list(range(len(acked), len(acked) + 4))
    acked += more
    assert_log_holds(node, acked)
    assert node.close() == 0
    check = walctl("verify", data_dir)
    assert check.returncode == 0, check.stdout + check.stderr
    node = node_factory(f"--data-dir={data_dir}")
    node.init()
    assert_log_holds(node, acked)
    assert node.close() == 0
    os.sync()
