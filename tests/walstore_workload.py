"""A replica's store workload, traced for the power-loss test (tests/test_walstore.py).

    python -m tests.walstore_workload TRACE ROOT

Runs the real WalStore on data directory ROOT with every file-system change traced
(wal/fstrace.py) into TRACE, and writes into the same trace, in order with those changes:

- ["wrote", [[offset, epoch, payload], ...]]  before entries are appended or a snapshot holding
  them is installed (payload None: an epoch-start record);
- ["unprotect", offset]  before a step that may remove entries from `offset` on (a truncation, a
  snapshot install that replaces a diverging log);
- ["ack", epoch, [[epoch, payload], ...]]  after a step is durable: the current epoch and every
  record from offset 0 the store now promises (its durable end).

A power cut at any point must leave the store holding the last ack's records, except from the
last unprotect on, with every record one that was written at its offset.
"""

from __future__ import annotations

import os
import sys

import msgpack

from wal import fstrace
from wal.replication.protocol import Entry, Position, Snapshot


def main(trace: str, root: str) -> None:
    fstrace.install(trace, root)
    from tests.sim_walstore import DiskStore, encode_record  # after install: its opens traced

    out = os.open(trace, os.O_WRONLY | os.O_APPEND)  # outside the root: not itself traced

    def emit(*rec: object) -> None:
        os.write(out, msgpack.packb(rec, use_bin_type=True))

    disk = DiskStore(os.path.join(root, "replica"))
    store = disk.store
    counter = 0

    def ack() -> None:
        emit("ack", store.current_epoch(), [list(r) for r in disk.durable_records()])

    def append(epoch: int, count: int, start_record: bool = False) -> None:
        nonlocal counter
        entries = []
        if start_record:
            entries.append(Entry(store.end(), epoch, None))
        for _ in range(count):
            counter += 1
            entries.append(
                Entry(store.end() + len(entries), epoch, b"set k%d=v%d" % (counter % 7, counter))
            )
        emit("wrote", [[e.offset, e.epoch, e.payload] for e in entries])
        for i in range(0, len(entries), 3):  # batches of three, each its own group commit
            store.append(entries[i : i + 3])
            disk.sync()
            ack()

    def new_epoch(epoch: int) -> None:
        store.set_current_epoch(epoch)
        ack()

    def truncate(offset: int) -> None:
        emit("unprotect", offset)
        store.truncate(offset)
        ack()

    def install(last: int, epoch: int, records: list) -> None:
        """A leader's snapshot of `records` (offsets 0..last); where they differ from ours, ours
        may go."""
        ours = disk.records()
        differ = next((o for o, r in enumerate(ours) if o > last or r != records[o]), len(ours))
        emit("wrote", [[o, e, p] for o, (e, p) in enumerate(records)])
        emit("unprotect", differ)
        history = {f"{o:08d}": encode_record(r) for o, r in enumerate(records)}
        state = {"state": history, "damaged": [], "rewritten": []}
        store.install_snapshot(Snapshot(Position(epoch, last), state))
        ack()

    new_epoch(3)
    append(3, 8, start_record=True)  # offsets 0..8, rolling segments (128 bytes each)
    new_epoch(5)
    append(5, 6, start_record=True)  # 9..15: a leader of 5 that the next one did not hear
    new_epoch(6)
    truncate(12)  # a follower cutting a suffix inside epoch 5
    truncate(9)  # ... and all of epoch 5: its line goes
    append(6, 7, start_record=True)
    disk.compact(4)  # the compactor's snapshot (epoch from EPOCHS) and the writer's compaction
    ack()
    new_epoch(7)
    truncate(store.start() + 3)  # across segments, and all of epoch 6: later files removed
    append(7, 5, start_record=True)
    # install, keeping our suffix: the leader's snapshot agrees with our log at its last entry
    install(store.end() - 3, store.epoch_at(store.end() - 3), disk.records()[: store.end() - 2])
    new_epoch(9)
    # install over a diverging log: the leader's history differs from offset 9 on (epoch 8)
    ours = disk.records()
    leader = ours[:9] + [(8, None)] + [(8, b"set k%d=leader%d" % (i % 7, i)) for i in range(14)]
    install(len(leader) - 1, 8, leader)
    append(9, 4, start_record=True)
    # install from far behind: the leader's snapshot extends our log (nothing of ours differs)
    ours = disk.records()
    ahead = ours + [(9, b"set k%d=ahead%d" % (i % 7, i)) for i in range(10)]
    install(len(ahead) - 1, 9, ahead)
    new_epoch(11)
    append(11, 5, start_record=True)
    # install from a leader whose snapshot ends inside our log and differs at its last entry
    ours = disk.records()
    install(len(ours) - 4, 12, ours[: len(ours) - 4] + [(12, None)])
    new_epoch(13)
    append(13, 5, start_record=True)
    truncate(store.end() - 2)
    disk.close()
    os.close(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
