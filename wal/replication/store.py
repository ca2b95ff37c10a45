"""WalStore: the protocol's `LogStore` on a real data directory (wal.Log + DataDir).

What the protocol needs beside the log's records, and where it lives
(docs/FORMAT.md has the bytes, docs/REPLICATION.md the reasons):

- the epoch of every entry: `DIR/wal/EPOCHS` (wal/epochs.py), written durably
  before the first entry of a new epoch is appended;
- the newest epoch seen: `current_epoch` in `DIR/walnode.meta`;
- a leader's first record of its epoch: an epoch-start record (wal/record.py);
- snapshots: the compactor's files (wal/snapshot.py), version 3 with the epoch
  of their last entry.

Every multi-file step is ordered for a disk that keeps each file's unsynced
data on its own (wal/powerloss.py), and `open` finishes one a power cut
interrupted: after any cut the store holds a log whose every entry has the
epoch it was written with, and every entry `durable_end` covered (unless a
truncation or snapshot install that had begun removes it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import msgpack

from wal import epochs
from wal import snapshot as snapshots  # `snapshot` is a LogStore method here
from wal.datadir import DataDir
from wal.epochs import EpochStart
from wal.errors import CorruptionError, WalError
from wal.log import Log
from wal.replication.protocol import Entry, Position, Snapshot

READ_MAX_BYTES = 4 << 20  # one read's budget; a batch is bounded by entries too


class WalStore:
    """A replica's log: `LogStore` (wal/replication/protocol.py) on `log` in `datadir`.

    The caller opens the log (Log.open with the data directory's reach, and
    `on_reach` set, as the writer does) and hands it over; `WalStore` then owns
    it. Not thread-safe: one thread (the replica's) calls it.
    """

    def __init__(self, datadir: DataDir, log: Log) -> None:
        self.datadir = datadir
        self.log = log
        self._epoch = int(datadir.read_meta().get("current_epoch", 0))
        lines = epochs.read(datadir.wal_dir) or []
        kept = [line for line in lines if line.start < log.next_offset]
        self._lines = kept
        if kept != lines:  # entries a power cut took, or a cut truncation: drop their lines
            self._write_lines()
        self._meet_snapshot(self._newest_snapshot())

    # --- LogStore ---

    def current_epoch(self) -> int:
        return self._epoch

    def set_current_epoch(self, epoch: int) -> None:
        if epoch < self._epoch:
            raise WalError(f"epoch {epoch} is older than the current epoch {self._epoch}")
        self.datadir.update_meta(current_epoch=epoch)  # atomic_write: fsynced
        self._epoch = epoch

    def start(self) -> int:
        return self.log.first_offset

    def end(self) -> int:
        return self.log.next_offset

    def epoch_at(self, offset: int) -> int:
        if not self.start() - 1 <= offset < self.end():
            raise IndexError(f"offset {offset} outside [{self.start() - 1}, {self.end()})")
        return epochs.epoch_at(self._lines, offset)

    def read(self, offset: int, limit: int) -> list[Entry]:
        if offset == self.end() or limit <= 0:
            return []
        out = []
        for e in self.log.scan(offset, limit, READ_MAX_BYTES):
            if not e.checksum_valid:
                raise CorruptionError(
                    self.log.directory,
                    None,
                    f"entry {e.offset} cannot be read (a failed checksum or a lost record): "
                    f"a replica ships no damaged entry; repair this replica from another",
                )
            payload = None if e.epoch_start is not None else e.payload
            out.append(Entry(e.offset, epochs.epoch_at(self._lines, e.offset), payload))
        return out

    def append(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            if entry.offset != self.end():
                raise ValueError(f"append at {entry.offset}, the log ends at {self.end()}")
            last = self._lines[-1].epoch if self._lines else 0
            if entry.epoch < last:
                raise ValueError(f"entry {entry.offset} of epoch {entry.epoch} after epoch {last}")
            if entry.epoch > last:
                # durable before the entry can be: no entry on disk lacks its line
                self._lines.append(EpochStart(entry.offset, entry.epoch))
                self._write_lines()
            if entry.payload is None:
                self.log.append_epoch_start(entry.epoch)
            else:
                self.log.append(entry.payload)

    def truncate(self, offset: int) -> None:
        self.log.truncate_from(offset)  # durable first: a line may not go before its entries
        self._drop_lines_from(offset)

    def durable_end(self) -> int:
        return self.log.durable_offset

    def snapshot(self) -> Snapshot | None:
        snap = self._newest_snapshot()
        if snap is None:
            return None
        last = snap.offset - 1
        epoch = snap.epoch if snap.epoch is not None else epochs.epoch_at(self._lines, last)
        return Snapshot(Position(epoch, last), _state_of(snap))

    def install_snapshot(self, snap: Snapshot) -> None:
        """The snapshot file is the commit point: written (durably) first; then the
        log is made to meet it, as `__init__` does after a cut (so a cut anywhere
        in between is finished at the next open)."""
        fields = snap.state
        damage = snapshots.Damage(tuple(fields["damaged"]), frozenset(fields["rewritten"]))
        written = snapshots.write(
            self.datadir.snapshot_dir,
            snap.last.offset + 1,
            fields["state"],
            damage,
            snap.last.epoch,
        )
        self._meet_snapshot(written)
        self.log.sync()  # entries it kept up to snap.last are durable as the snapshot is

    # --- what the wiring calls ---

    def sync(self) -> None:
        """The group commit (the protocol's SyncLog): flush and fdatasync the log."""
        self.log.sync()

    def close(self) -> None:
        self.log.close()

    # --- inside ---

    def _write_lines(self) -> None:
        epochs.write(self.datadir.wal_dir, self._lines)

    def _drop_lines_from(self, offset: int) -> None:
        kept = [line for line in self._lines if line.start < offset]
        if kept != self._lines:
            self._lines = kept
            self._write_lines()

    def _newest_snapshot(self) -> snapshots.Snapshot | None:
        """The newest snapshot file that passes its checks. Unlike load_latest it
        moves nothing aside (the compactor owns that) and steps over a file the
        compactor pruned meanwhile."""
        directory = self.datadir.snapshot_dir
        for offset in reversed(snapshots.list_offsets(directory)):
            path = os.path.join(directory, snapshots.snapshot_name(offset))
            try:
                with open(path, "rb") as f:
                    data = f.read()
                got, state, damage, epoch = snapshots.decode_all(data)
            except (OSError, ValueError, msgpack.UnpackException):
                continue
            if got == offset:
                return snapshots.Snapshot(offset, state, path, len(data), damage, epoch)
        return None

    def _meet_snapshot(self, snap: snapshots.Snapshot | None) -> None:
        """Make the log agree with a snapshot (the newest, or one just installed).

        A snapshot whose last entry (epoch E at offset L) the log holds with E
        agrees: the log's entries up to L are the snapshot's (log matching), and
        nothing changes (the compactor compacts when it decides to). Otherwise
        the log's suffix after L is cut, every entry up to L removed (the log
        restarts at L + 1), then EPOCHS says L has epoch E. Each step is
        durable and a repeat of one is a no-op, so a cut between them is
        finished here at the next open."""
        if snap is None or snap.epoch is None or snap.offset == 0:
            return  # a single node's snapshot, one taken before any epoch, or an empty one
        last, epoch = snap.offset - 1, snap.epoch
        if last < self.start() - 1:
            return  # older than the log's start: the log is past it
        if not (last < self.end() and epochs.epoch_at(self._lines, last) == epoch):
            if last + 1 < self.end():
                self.log.truncate_from(last + 1)
                self._drop_lines_from(last + 1)
            self.log.truncate_before(last + 1, past_end=True)
        if epochs.epoch_at(self._lines, last) != epoch:
            self._lines = [EpochStart(last, epoch)] + [x for x in self._lines if x.start > last]
            self._write_lines()


def _state_of(snap: snapshots.Snapshot) -> dict:
    """A snapshot's content as the protocol carries it (msgpack-friendly)."""
    return {
        "state": snap.state,
        "damaged": list(snap.damage.damaged),
        "rewritten": sorted(snap.damage.rewritten),
    }
