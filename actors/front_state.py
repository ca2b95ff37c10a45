"""What a restarted front must not forget, in the run directory (beside
the inbox, actors/inbox.py, which keeps the lines read but not answered).

`front.state` is two u64s, mmapped: the next reply msg_id, so ids never
repeat, and the offset after the newest acknowledged append, so kv_get
keeps reading its writes. Both are stored before the lines they govern are
written. `node_id` is the id the last successful init gave the node.
"""

from __future__ import annotations

import mmap
import os
import struct


class FrontState:
    LAYOUT = struct.Struct("<QQ")

    def __init__(self, run_dir: str) -> None:
        fd = os.open(os.path.join(run_dir, "front.state"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < self.LAYOUT.size:
                os.ftruncate(fd, self.LAYOUT.size)
            self._mm = mmap.mmap(fd, self.LAYOUT.size)
        finally:
            os.close(fd)
        self._next_msg_id, self.acked_next = self.LAYOUT.unpack_from(self._mm)
        self.node_id_path = os.path.join(run_dir, "node_id")
        self.node_id: str | None = None
        if os.path.exists(self.node_id_path):
            with open(self.node_id_path) as f:
                self.node_id = f.read() or None

    def take_msg_id(self) -> int:
        return self.take_msg_ids(1)

    def take_msg_ids(self, count: int) -> int:
        """`count` msg_ids in a row, stored once; the first of them."""
        n = self._next_msg_id
        self._next_msg_id = n + count
        struct.pack_into("<Q", self._mm, 0, n + count)
        return n

    def store_acked_next(self, acked_next: int) -> None:
        self.acked_next = acked_next
        struct.pack_into("<Q", self._mm, 8, acked_next)

    def store_node_id(self, node_id: str) -> None:
        self.node_id = node_id
        tmp = self.node_id_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(node_id)
        os.replace(tmp, self.node_id_path)
