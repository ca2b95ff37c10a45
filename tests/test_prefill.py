"""The next segment prepared ahead (wal/prefill.py, docs/FORMAT.md "The
prepared next segment"): a roll takes it by a rename and the writer never
zero-fills such a segment on its own thread; a file of another size is never
used; a full disk while preparing harms nothing; a leftover, whole or cut
short, and a rename a cut kept or lost, all open by themselves, with every
acknowledged entry and no stray file.
"""

from __future__ import annotations

import errno
import os
import threading

import pytest

from tests.nodeproc import wait_until, walctl
from wal import Log, powerloss
from wal.fstrace import ROOT_ENV, TRACE_ENV
from wal.prefill import PREPARED_NAME, Preparer
from wal.segment import parse_name, segment_name

SEGMENT_BYTES = 4096
PAYLOAD = b"p" * 92  # a 100-byte record: 40 to a segment


def payloads(n: int, start: int = 0) -> list[bytes]:
    return [b"%06d" % i + PAYLOAD[6:] for i in range(start, start + n)]


def open_log(wal: str, size: int = SEGMENT_BYTES, prepare: bool = True) -> Log:
    log, _ = Log.open(wal, max_segment_bytes=size)
    if prepare:
        log.start_preparing(0.0)  # at once (the writer's: from half full, below)
    return log


def wait_ready(log: Log) -> None:
    assert log.preparer is not None
    assert wait_until(lambda: log.preparer.ready, timeout=10), log.preparer.stats


def append_synced(log: Log, items: list[bytes]) -> None:
    for p in items:
        log.append(p)
        log.sync()


def zero_writes_by_thread(monkeypatch) -> list[str]:
    """The thread names of every all-zero pwrite from now on."""
    seen: list[str] = []
    real = os.pwrite

    def pwrite(fd, data, offset):  # noqa: ANN001, ANN202
        if not any(data):
            seen.append(threading.current_thread().name)
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return seen


def test_the_writers_preparer_waits_for_a_half_full_segment(tmp_path):
    """start_preparing()'s default: no zeros while the active segment is under
    half full (a start, or a node that never fills one, writes no whole
    segment of them), the file ready once it passes half; after the roll that
    takes it, the next waits for half again."""
    wal = str(tmp_path / "wal")
    log, _ = Log.open(wal, max_segment_bytes=SEGMENT_BYTES)
    try:
        log.start_preparing()
        append_synced(log, payloads(19))  # 1,900 of 4,096 bytes
        threading.Event().wait(0.3)
        assert PREPARED_NAME not in os.listdir(wal) and not log.preparer.ready
        append_synced(log, payloads(2, 19))  # 2,100: past half
        wait_ready(log)
        append_synced(log, payloads(20, 21))  # rolls at 40 into the prepared file
        assert log.rolls.prepared == 1 and log.active.size < SEGMENT_BYTES // 2
        threading.Event().wait(0.3)
        assert PREPARED_NAME not in os.listdir(wal) and not log.preparer.ready
    finally:
        log.close()


def test_a_roll_renames_the_prepared_file_and_fills_nothing_itself(tmp_path, monkeypatch):
    wal = str(tmp_path)
    log = open_log(wal)
    try:
        append_synced(log, payloads(40))  # segment 0 full
        wait_ready(log)
        prepared = os.stat(os.path.join(wal, PREPARED_NAME))
        assert prepared.st_size == SEGMENT_BYTES
        zeros = zero_writes_by_thread(monkeypatch)
        append_synced(log, payloads(40, 40))  # rolls into segment 40, fills it
        new = os.stat(os.path.join(wal, segment_name(40)))
        assert (new.st_ino, new.st_size) == (prepared.st_ino, SEGMENT_BYTES)
        assert log.rolls.prepared == 1 and log.rolls.created == 0
        assert "MainThread" not in zeros, "the writer's thread zero-filled a prepared segment"
        wait_ready(log)  # the next one, made after the rename
        assert [log.read(i).payload for i in range(80)] == payloads(80)
    finally:
        log.close()
    assert PREPARED_NAME not in os.listdir(wal)  # close removes it


def test_no_ready_file_falls_back_to_creating_the_segment(tmp_path, monkeypatch):
    wal = str(tmp_path)
    log = open_log(wal)
    try:
        assert log.preparer is not None
        monkeypatch.setattr(log.preparer, "take", lambda size: None)  # never ready in time
        zeros = zero_writes_by_thread(monkeypatch)
        append_synced(log, payloads(41))
        assert log.rolls.prepared == 0 and log.rolls.created == 1
        assert "MainThread" in zeros  # today's path: the writer fills its new segment
        assert [log.read(i).payload for i in range(41)] == payloads(41)
    finally:
        log.close()


def test_a_prepared_file_of_another_size_is_never_used(tmp_path):
    wal = str(tmp_path)
    preparer = Preparer(wal, 8192)
    try:
        assert wait_until(lambda: preparer.ready, timeout=10)
        assert preparer.take(4096) is None  # the size changed: not this file
        preparer.want(4096)  # the old one is removed, one of the new size made
        assert wait_until(lambda: preparer.ready, timeout=10)
        got = preparer.take(4096)
        assert got is not None and os.fstat(got.fd).st_size == 4096
        os.close(got.fd)
    finally:
        preparer.close()
    log = open_log(wal, size=8192)
    try:
        append_synced(log, payloads(40))
        wait_ready(log)  # 8192 bytes
        log.max_segment_bytes = SEGMENT_BYTES  # wal_segment_config: rolls at 4096 from now on
        wait_ready(log)
        assert os.path.getsize(os.path.join(wal, PREPARED_NAME)) == SEGMENT_BYTES
        append_synced(log, payloads(1, 40))  # 4100 bytes: rolls
        newest = log.segments()[-1]
        assert log.rolls.prepared == 1 and newest.start_offset == 40
        assert os.path.getsize(os.path.join(wal, newest.file)) == SEGMENT_BYTES
    finally:
        log.close()


def test_a_full_disk_while_preparing_harms_nothing(tmp_path, monkeypatch):
    wal = str(tmp_path)
    real = os.pwrite

    def full(fd, data, offset):  # noqa: ANN001, ANN202
        if threading.current_thread().name == "prefill":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    log = open_log(wal)
    try:
        assert log.preparer is not None
        assert wait_until(lambda: log.preparer.stats.failed >= 1, timeout=10)
        assert wait_until(lambda: PREPARED_NAME not in os.listdir(wal), timeout=10)
        append_synced(log, payloads(41))
        assert log.rolls.created == 1 and log.rolls.prepared == 0  # fell back
        monkeypatch.setattr(os, "pwrite", real)  # space is back: a roll asks again
        append_synced(log, payloads(40, 41))  # (the roll's retry may have run before or after)
        wait_ready(log)
        append_synced(log, payloads(40, 81))
        assert log.rolls.prepared >= 1 and log.rolls.prepared + log.rolls.created == 3
        assert [log.read(i).payload for i in range(121)] == payloads(121)
    finally:
        log.close()


def test_an_append_that_finds_the_disk_full_frees_the_prepared_file(tmp_path, monkeypatch):
    from wal import DiskFull

    wal = str(tmp_path)
    log = open_log(wal, prepare=False)
    log.max_segment_bytes = 1 << 20
    log.start_preparing(0.0)
    try:
        wait_ready(log)
        real = os.write

        def full(fd, data):  # noqa: ANN001, ANN202
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "write", full)
        log.append(b"x" * 100)
        with pytest.raises(DiskFull):
            log.sync()
        monkeypatch.setattr(os, "write", real)
        assert PREPARED_NAME not in os.listdir(wal)  # its megabyte went to the appends
        assert log.preparer is not None and not log.preparer.ready
    finally:
        log.close()


# -- what a stop, a kill or a power cut leaves ---------------------------------


def sealed_then(wal: str, renamed: bool, leftover: bytes | None) -> None:
    """Segment 0 sealed with 40 entries (and its index), as a roll leaves it
    before the rename; `renamed`: the rename reached the disk (segment 40, all
    zeros); `leftover`: a next.prefill with these bytes."""
    log = open_log(wal)
    try:
        append_synced(log, payloads(40))
        wait_ready(log)
        log.roll()  # renames the prepared file to segment 40
        assert log.rolls.prepared == 1
    finally:
        log.close()  # removes the next one, if it was made already
    path = os.path.join(wal, segment_name(40))
    assert os.path.getsize(path) == SEGMENT_BYTES
    if not renamed:
        os.remove(path)  # the rename's entry lost: the file is there under its old name
    prepared = os.path.join(wal, PREPARED_NAME)
    if leftover is not None:
        with open(prepared, "wb") as f:
            f.write(leftover)


@pytest.mark.parametrize(
    "renamed,leftover",
    [
        (False, bytes(SEGMENT_BYTES)),  # the rename lost: the whole file under the temp name
        (False, bytes(1000)),  # ... and cut short, as a cut mid-fill leaves one
        (True, None),  # the rename kept: the new segment, all zeros
        (True, bytes(SEGMENT_BYTES)),  # ... and the next one prepared already
        (True, b"\0" * 512 + b"garbage"),  # ... or one torn with stale bytes in it
    ],
    ids=["temp-name", "half-filled", "renamed", "renamed+next", "renamed+torn-next"],
)
def test_every_state_a_cut_leaves_opens_by_itself(tmp_path, renamed, leftover):
    root = str(tmp_path / "data")
    wal = os.path.join(root, "wal")
    os.makedirs(wal)
    sealed_then(wal, renamed, leftover)
    out = walctl("verify", root)  # before start-up settled it: the same verdict
    assert out.returncode == 0 and "40 valid records" in out.stdout, out.stdout
    log, _ = Log.open(wal, max_segment_bytes=SEGMENT_BYTES)
    try:
        assert PREPARED_NAME not in os.listdir(wal)
        assert (log.first_offset, log.next_offset) == (0, 40)
        assert [log.read(i).payload for i in range(40)] == payloads(40)
        assert [s.start_offset for s in log.segments()] == ([0, 40] if renamed else [0])
        append_synced(log, [b"after the cut"])
        assert log.read(40).payload == b"after the cut"
    finally:
        log.close()
    names = os.listdir(wal)
    assert PREPARED_NAME not in names  # removed, never taken for a segment
    bases = sorted(b for n in names if (b := parse_name(n)) is not None)
    assert bases == ([0, 40] if renamed else [0])  # no stray segment
    assert walctl("verify", root).returncode == 0


def test_the_real_writer_rolls_into_prepared_files(tmp_path, node_factory):
    """Through the file-system trace of a real node: every segment after the
    first is a prepared file renamed, and no zero is written into a file
    while it has a segment's name except the first one's (created at start,
    before anything was prepared)."""
    root = tmp_path / "data"
    root.mkdir()
    trace = tmp_path / "trace"
    node = node_factory(
        f"--data-dir={root}",
        f"--max-segment-bytes={SEGMENT_BYTES}",
        "--no-auto-compact",
        env={TRACE_ENV: str(trace), ROOT_ENV: str(root)},
    )
    node.init()
    prepared = os.path.join(str(root), "wal", PREPARED_NAME)
    for i in range(200):  # 4 rolls (40 records to a segment)
        if i % 40 == 39:  # the preparer keeps up (its file has its size once it is filled)
            assert wait_until(lambda: os.path.exists(prepared), timeout=10)
            assert wait_until(lambda: os.path.getsize(prepared) == SEGMENT_BYTES, timeout=10)
            threading.Event().wait(0.2)  # and fsynced
        assert node.call_ok({"type": "wal_append", "payload": "x" * 92})["offset"] == i
    assert node.close() == 0
    disk = powerloss.Disk(str(root))
    wal = os.path.join(str(root), "wal")
    renamed, filled_as_segment = [], set()
    for rec in powerloss.read_trace(str(trace)):
        if rec[0] == "rename" and os.path.basename(rec[2]) == PREPARED_NAME:
            renamed.append(os.path.basename(rec[3]))
        if rec[0] == "write" and not any(rec[4]):
            node_ = disk.fds[(rec[1], rec[2])]
            name = next((n for n, v in disk.dirs[wal].names.items() if v == node_), None)
            if name is not None and parse_name(name) is not None:
                filled_as_segment.add(name)
        disk.apply(rec)
    assert renamed == [segment_name(40 * i) for i in range(1, 5)]
    assert filled_as_segment == {segment_name(0)}


KILL_POINTS = [
    "prefill.half_filled",  # the preparer's zeros half written
    "prefill.filled",  # written, not fsynced
    "prefill.synced",  # fsynced, its directory entry not
    "roll.before_rename",  # the old segment sealed and indexed, the file taken
    "roll.after_rename",  # renamed, the directory not fsynced
    "roll.after_dir_fsync",  # the new segment durable, nothing in it yet
]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_at_every_step_of_prepare_and_roll(tmp_path, node_factory, point):
    """The writer SIGKILLs itself once at `point` (a kill -9 there); the
    supervisor restarts it and appends go on. A clean start then serves
    every acknowledged entry, `walctl verify` passes, and the directory holds
    chained segments and nothing prepared."""
    root = str(tmp_path / "data")
    once = tmp_path / "crashed"
    flags = (f"--data-dir={root}", f"--max-segment-bytes={SEGMENT_BYTES}", "--no-auto-compact")
    node = node_factory(*flags, env={"WALNODE_CRASH_AT": point, "WALNODE_CRASH_ONCE": str(once)})
    node.init()
    acked: dict[int, str] = {}
    for i in range(100):  # two rolls
        p = f"{i:06d}" + "y" * 86
        body = node.call({"type": "wal_append", "payload": p}, timeout=20)
        if body["type"] == "wal_append_ok":
            acked[body["offset"]] = p
            continue
        assert body["code"] in (11, 13), body  # the writer died under it, or is restarting
        assert wait_until(lambda: node.process("writer")["state"] == "ready", timeout=10)
    assert once.exists(), f"{point} was never reached"
    assert node.process("writer")["restarts"] == 1  # the kill's; its successor started at once
    assert node.close() == 0
    wal = os.path.join(root, "wal")
    assert PREPARED_NAME not in os.listdir(wal)
    out = walctl("verify", root)
    assert out.returncode == 0, out.stdout
    log, _ = Log.open(wal, max_segment_bytes=SEGMENT_BYTES)  # as the next writer's start
    try:
        assert {o: log.read(o).payload.decode() for o in acked} == acked
    finally:
        log.close()
