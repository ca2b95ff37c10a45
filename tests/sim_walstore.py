"""The real WalStore (wal/replication/store.py) on a directory, for the replication simulation.

Every LogStore call goes to a real `WalStore` on a real data directory: records in segment files,
EPOCHS, walnode.meta, snapshot files, real fsyncs. What the simulation's scheduler does besides
(tests/replsim.py) is done the way the processes do it:

- `compact(upto)`: what the compactor and the writer do: a snapshot file with the epoch from
  EPOCHS (the compactor's `epochs.snapshot_epoch`), then `Log.truncate_before`;
- `crash()`: a power cut as the simulation models it (the unsynced tail is lost): the log is cut
  back to its durable end (`Log.truncate_from`, leaving EPOCHS as the cut would) and closed
  without a sync; the store is then opened again from the directory, as a restart opens it.

The state machine's state is the checker's history: a snapshot maps each offset it covers to
its record ("EPOCH" for an epoch-start record, "EPOCH PAYLOAD" else).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from wal import DataDir, Log, epochs, snapshot
from wal.replication.protocol import Entry, Snapshot
from wal.replication.store import WalStore

Record = tuple[int, bytes | None]
SEGMENT_BYTES = 128  # a few entries per segment: truncations and snapshots cross segments


def open_store(path: str, max_segment_bytes: int = SEGMENT_BYTES) -> WalStore:
    """Open a WalStore on the data directory `path` as a replica does (the reach recorded)."""
    datadir = DataDir(path)
    meta = datadir.read_meta()
    log, _ = Log.open(
        datadir.wal_dir, max_segment_bytes=max_segment_bytes, reached=meta.get("reached_segment")
    )
    log.on_reach = lambda base: datadir.update_meta(reached_segment=base)
    return WalStore(datadir, log)


def encode_record(record: Record) -> str:
    epoch, payload = record
    return f"{epoch}" if payload is None else f"{epoch} {payload.decode()}"


def decode_record(text: str) -> Record:
    epoch, _, payload = text.partition(" ")
    return int(epoch), payload.encode() if payload or " " in text else None


class DiskStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self.store = open_store(path)

    # --- LogStore: the real one ---

    def current_epoch(self) -> int:
        return self.store.current_epoch()

    def set_current_epoch(self, epoch: int) -> None:
        self.store.set_current_epoch(epoch)

    def start(self) -> int:
        return self.store.start()

    def end(self) -> int:
        return self.store.end()

    def epoch_at(self, offset: int) -> int:
        return self.store.epoch_at(offset)

    def read(self, offset: int, limit: int) -> list[Entry]:
        return self.store.read(offset, limit)

    def append(self, entries: Sequence[Entry]) -> None:
        self.store.append(entries)

    def truncate(self, offset: int) -> None:
        self.store.truncate(offset)

    def durable_end(self) -> int:
        return self.store.durable_end()

    def snapshot(self) -> Snapshot | None:
        return self.store.snapshot()

    def install_snapshot(self, snap: Snapshot) -> None:
        self.store.install_snapshot(snap)

    # --- what the simulated disk and compactor do ---

    def sync(self) -> None:
        self.store.sync()

    def crash(self) -> None:
        log = self.store.log
        log.truncate_from(max(log.durable_offset, log.first_offset))
        log.close()
        self.store = open_store(self.path)

    def compact(self, upto: int) -> None:
        history = {f"{o:08d}": encode_record(r) for o, r in enumerate(self.records()[: upto + 1])}
        wal_dir = self.store.datadir.wal_dir
        snapshot.write(
            self.store.datadir.snapshot_dir,
            upto + 1,
            history,
            epoch=epochs.snapshot_epoch(wal_dir, upto),
        )
        self.store.log.truncate_before(upto + 1)

    # --- what the checker reads ---

    def records(self) -> list[Record]:
        start, end = self.store.start(), self.store.end()
        snap = self.store.snapshot()
        head: list[Record] = []
        if snap is not None:
            history = snap.state["state"]
            head = [decode_record(history[key]) for key in sorted(history)][:start]
        assert len(head) == start, f"{self.path}: the snapshot ends before the log starts"
        tail = [(e.epoch, e.payload) for e in self.store.read(start, end - start)]
        return head + tail

    def durable_records(self) -> list[Record]:
        return self.records()[: self.store.durable_end()]

    def close(self) -> None:
        self.store.close()


def stores_in(root: str):
    """A factory for Simulation.make_store: replica `rid`'s store in `root`/rid."""

    def make(rid: str) -> DiskStore:
        return DiskStore(os.path.join(root, rid))

    return make
