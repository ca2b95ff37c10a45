"""An in-memory LogStore for the replication simulation only (never a stand-in for wal.Log).

It keeps what a disk would: entries appended since the last sync are lost by `crash`; the epoch,
truncations, snapshots and installs are durable when they return (the real Log fsyncs them).
"""

from __future__ import annotations

from collections.abc import Sequence

from wal.replication.protocol import Entry, Position, Snapshot

Record = tuple[int, bytes | None]  # (epoch, payload): what the checker compares


class MemoryStore:
    def __init__(self) -> None:
        self._epoch = 0
        self._snapshot: Snapshot | None = None  # state: tuple[Record, ...] for offsets 0..last
        self._start = 0
        self._entries: list[Entry] = []  # offsets start .. end-1
        self._synced = 0  # one past the last synced offset

    # --- LogStore ---

    def current_epoch(self) -> int:
        return self._epoch

    def set_current_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def start(self) -> int:
        return self._start

    def end(self) -> int:
        return self._start + len(self._entries)

    def epoch_at(self, offset: int) -> int:
        if offset == self._start - 1:
            return self._snapshot.last.epoch if self._snapshot else 0
        if not self._start <= offset < self.end():
            raise IndexError(f"offset {offset} outside [{self._start - 1}, {self.end()})")
        return self._entries[offset - self._start].epoch

    def read(self, offset: int, limit: int) -> list[Entry]:
        index = offset - self._start
        return self._entries[index : index + limit]

    def append(self, entries: Sequence[Entry]) -> None:
        if entries and entries[0].offset != self.end():
            raise ValueError(f"append at {entries[0].offset}, end is {self.end()}")
        self._entries.extend(entries)

    def truncate(self, offset: int) -> None:
        del self._entries[offset - self._start :]
        self._synced = min(self._synced, offset)

    def durable_end(self) -> int:
        return self._synced

    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def install_snapshot(self, snapshot: Snapshot) -> None:
        last = snapshot.last.offset
        keeps_suffix = (
            self._start - 1 <= last < self.end() and self.epoch_at(last) == snapshot.last.epoch
        )
        self._entries = self._entries[last + 1 - self._start :] if keeps_suffix else []
        self._start = last + 1
        self._synced = max(self._synced, last + 1) if keeps_suffix else last + 1
        self._snapshot = snapshot

    # --- what the simulated disk and compactor do ---

    def sync(self) -> None:
        self._synced = self.end()

    def crash(self) -> None:
        """Power cut: the unsynced tail is gone."""
        del self._entries[self._synced - self._start :]

    def compact(self, upto: int) -> None:
        """Snapshot every entry up to `upto` (committed and synced) and drop them from the log."""
        state = tuple(self.records()[: upto + 1])
        self._snapshot = Snapshot(Position(self.epoch_at(upto), upto), state)
        self._entries = self._entries[upto + 1 - self._start :]
        self._start = upto + 1

    # --- what the checker reads ---

    def records(self) -> list[Record]:
        """Every record from offset 0, synced or not (snapshot state first)."""
        head = list(self._snapshot.state) if self._snapshot else []
        return head + [(entry.epoch, entry.payload) for entry in self._entries]

    def durable_records(self) -> list[Record]:
        """What would survive a crash now, from offset 0."""
        return self.records()[: self._synced]
