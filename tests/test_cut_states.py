"""States a power cut leaves in the middle of a multi-file step, built by hand
(docs/FORMAT.md, "Durability steps"): start-up settles each by itself, and
`walctl verify` judges each exactly as Log.open does (one decision,
wal/layout.py).

- An interrupted roll by older walnode: the new, empty segment reached the
  disk, the old segment's unsynced tail did not.
- A cut compaction: LOG_START committed, the rewrite renamed in, the old
  segments not yet deleted.
- The roll's order itself: the new segment never exists before the old one
  is whole, and a roll that cannot create it leaves the old one active.
"""

from __future__ import annotations

import errno
import os

import pytest

from tests.damage import cut_to_data
from tests.nodeproc import walctl
from tests.test_segment_index import SEGMENT_BYTES, payload_of, seg, write_log
from wal import CorruptionError, DiskFull, Log, record
from wal.segment import Segment, segment_name


def older_rolls_cut(wal: str, torn: bytes) -> None:
    """What a cut left under the old roll (create the new segment, then
    fdatasync the old one): segment 3 holds 3 acknowledged entries and, of
    the batch the roll flushed (entries 6 and 7, never acknowledged), only
    `torn`; the empty segment 8 had its directory entry committed."""
    write_log(wal, 6)  # segments 0 and 3, both whole; 3 is the newest
    cut_to_data(seg(wal, 3))  # older walnode did not preallocate
    with open(seg(wal, 3), "ab") as f:
        f.write(torn)
    open(seg(wal, 8), "wb").close()


@pytest.mark.parametrize(
    "torn",
    [b"", record.encode(payload_of(6))[0][:11], record.encode(payload_of(6))[0] + b"\0" * 5],
    ids=["tail lost whole", "torn mid-record", "one record, then zeros"],
)
def test_an_interrupted_roll_starts_by_itself(tmp_path, torn):
    wal = str(tmp_path)
    older_rolls_cut(wal, torn)
    log, report = Log.open(wal, max_segment_bytes=SEGMENT_BYTES)
    try:
        whole = len(torn) >= 18  # entry 6 survived whole
        assert report.interrupted_roll == segment_name(8)
        assert any("interrupted" in n for n in report.notes)
        assert log.next_offset == (7 if whole else 6)
        assert [log.read(i).payload for i in range(6)] == [payload_of(i) for i in range(6)]
        log.append(b"after the cut")
        log.sync()
        assert log.read(log.next_offset - 1).payload == b"after the cut"
    finally:
        log.close()
    assert not os.path.exists(seg(wal, 8)) or os.path.getsize(seg(wal, 8)) > 0


def data_dir_with_wal(tmp_path) -> tuple[str, str]:
    root = str(tmp_path / "data")
    wal = os.path.join(root, "wal")
    os.makedirs(wal)
    return root, wal


def test_verify_and_the_real_node_agree_on_an_interrupted_roll(tmp_path, node_factory):
    root, wal = data_dir_with_wal(tmp_path)
    older_rolls_cut(wal, record.encode(payload_of(6))[0][:11])
    out = walctl("verify", root)  # before start-up settled it: the same decision
    assert out.returncode == 0, out.stdout + out.stderr
    assert "torn tail" in out.stdout
    node = node_factory(f"--data-dir={root}", f"--max-segment-bytes={SEGMENT_BYTES}")
    node.init()
    recovery = node.status()["recoveries"]["writer"]  # last_recovery: the compactor's, later
    assert recovery["interrupted_roll"] == segment_name(8), recovery
    assert recovery["bytes_truncated"] == 11 and recovery["next_offset"] == 6
    assert node.call_ok({"type": "wal_read", "offset": 5})["payload"] == "entry-0005"
    assert node.call_ok({"type": "wal_append", "payload": "next"})["offset"] == 6
    assert node.close() == 0
    out = walctl("verify", root)
    assert out.returncode == 0 and "7 valid records" in out.stdout, out.stdout


def test_what_is_not_an_interrupted_roll_still_refuses(tmp_path):
    wal = str(tmp_path)
    write_log(wal, 9)  # segments 0, 3 (sealed, indexed) and 6
    # an empty newest segment past one whose index vouches it was sealed whole:
    # no roll leaves that (the index is written after the fdatasync), entries are missing
    os.remove(seg(wal, 6))
    open(seg(wal, 8), "wb").close()
    with pytest.raises(CorruptionError, match="gap or overlap"):
        Log.open(wal, max_segment_bytes=SEGMENT_BYTES)
    assert os.path.exists(seg(wal, 8))  # a refused open changes nothing
    os.remove(seg(wal, 8))
    os.remove(os.path.join(wal, "00000000000000000003.idx"))
    # a non-empty newest segment past a torn one: it held acknowledged entries
    with open(seg(wal, 3), "ab") as f:
        f.write(record.encode(payload_of(6))[0][:11])
    with open(seg(wal, 8), "wb") as f:
        f.write(record.encode(payload_of(8))[0])
    with pytest.raises(CorruptionError):
        Log.open(wal, max_segment_bytes=SEGMENT_BYTES)


def test_a_cut_after_the_compaction_rename_is_one_verdict(tmp_path, node_factory):
    """LOG_START = 4 committed and the rewrite renamed to 4.log, but the old
    segment 3 (holding 3..5) not deleted: verify and Log.open both accept it."""
    root, wal = data_dir_with_wal(tmp_path)
    write_log(wal, 9)  # segments 0, 3, 6
    with open(seg(wal, 3), "rb") as f:
        data = f.read()
    with open(seg(wal, 4), "wb") as f:
        f.write(data[18:])  # the rewrite: entries 4 and 5
    with open(os.path.join(wal, "LOG_START"), "w") as f:
        f.write("4\n")
    out = walctl("verify", root)
    assert out.returncode == 0, out.stdout
    assert "5 valid records" in out.stdout  # 4..8: segments 0 and 3 are compacted away
    log, report = Log.open(wal, max_segment_bytes=SEGMENT_BYTES)
    try:
        assert (log.first_offset, log.next_offset) == (4, 9)
        assert any("compacted away" in n for n in report.notes)
    finally:
        log.close()
    assert sorted(n for n in os.listdir(wal) if n.endswith(".log")) == [
        segment_name(4),
        segment_name(6),
    ]
    assert walctl("verify", root).returncode == 0


def test_the_roll_creates_the_new_segment_only_after_the_old_one_is_whole(tmp_path, monkeypatch):
    """The order of the calls a roll makes: fdatasync of the old segment and
    its durable index before the new file is created, then the directory."""
    wal = str(tmp_path)
    log, _ = Log.open(wal, max_segment_bytes=SEGMENT_BYTES)
    for i in range(3):
        log.append(payload_of(i))
    log.sync()
    calls: list[str] = []
    real_create, real_fdatasync, real_replace = Segment.create, os.fdatasync, os.replace
    import wal.log as log_module

    real_fsync_dir = log_module.fsync_dir
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append("fdatasync"), real_fdatasync(fd)))
    monkeypatch.setattr(
        os,
        "replace",
        lambda a, b: (calls.append("rename " + os.path.basename(b)), real_replace(a, b)),
    )
    monkeypatch.setattr(
        Segment,
        "create",
        classmethod(lambda cls, d, b: (calls.append("create"), real_create.__func__(cls, d, b))[1]),
    )
    monkeypatch.setattr(
        log_module, "fsync_dir", lambda d: (calls.append("fsync_dir"), real_fsync_dir(d))
    )
    log.append(payload_of(3))  # rolls
    monkeypatch.undo()
    log.close()
    assert calls.index("fdatasync") < calls.index("rename " + "00000000000000000000.idx")
    assert calls.index("rename 00000000000000000000.idx") < calls.index("create")
    assert calls[-2:] == ["create", "fsync_dir"], calls


def test_a_roll_that_cannot_create_its_segment_leaves_the_old_one_active(tmp_path, monkeypatch):
    wal = str(tmp_path)
    log, _ = Log.open(wal, max_segment_bytes=SEGMENT_BYTES)
    try:
        for i in range(3):
            log.append(payload_of(i))
        log.sync()

        def full(cls, directory, base):  # noqa: ANN001, ANN202
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(Segment, "create", classmethod(full))
        with pytest.raises(DiskFull):
            log.append(payload_of(3))
        monkeypatch.undo()
        assert log.segment_count == 1 and not log.active.sealed
        assert os.listdir(wal) == [segment_name(0)]  # no index left for an active segment
        log.append(payload_of(3))  # space is back: this one rolls
        log.sync()
        assert log.segment_count == 2 and log.read(3).payload == payload_of(3)
    finally:
        log.close()
