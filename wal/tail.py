"""Follow a log that another process writes: read-only, in offset order.

The compactor uses this to apply entries to its state machine without the
writer shipping payloads to it. It only reads entries the caller knows are
written (below the writer's acknowledged offset), so it never meets a
record that is still being written. After a compaction rewrites or removes
the segment it was reading, it finds its place again by file name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from wal.errors import CorruptionError, WalError
from wal.log import read_start_offset
from wal.record import HEADER, HEADER_SIZE, Damage, decode_at
from wal.segment import parse_name

CHUNK = 1 << 20


class LogTail:
    def __init__(self, directory: str, offset: int) -> None:
        self.directory = directory
        self.offset = offset  # the next entry to return
        self._fd = -1
        self._path = ""
        self._pos = 0  # byte of the next record in the open file

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _open_for(self, offset: int) -> None:
        """Open the segment holding `offset` and seek to its record."""
        names = sorted(
            (b, n) for n in os.listdir(self.directory) if (b := parse_name(n)) is not None
        )
        start = read_start_offset(self.directory)
        holding = [(b, n) for b, n in names if b <= offset]
        if not holding or (start is not None and offset < start):
            first = start if start is not None else (names[0][0] if names else 0)
            raise WalError(f"entry {offset} is no longer in the log (it starts at {first})")
        base, name = holding[-1]
        self.close()
        self._path = os.path.join(self.directory, name)
        self._fd = os.open(self._path, os.O_RDONLY)
        pos = 0
        for _ in range(offset - base):  # skip to the entry: headers only
            head = os.pread(self._fd, HEADER_SIZE, pos)
            if len(head) < HEADER_SIZE:
                raise WalError(f"entry {offset} is not in {self._path} yet")
            pos += HEADER_SIZE + HEADER.unpack(head)[0]
        self._pos = pos

    def read(self, until: int) -> Iterator[tuple[int, bytes]]:
        """Yield (offset, payload) for every entry from here up to `until` (exclusive)."""
        stalled = False
        while self.offset < until:
            if self._fd < 0:
                self._open_for(self.offset)
            want = CHUNK
            buf = os.pread(self._fd, want, self._pos)
            p = 0
            while self.offset < until:
                got = decode_at(buf, p)
                if isinstance(got, Damage):
                    if got is Damage.BAD_CRC:
                        raise CorruptionError(self._path, self._pos + p, got.value)
                    if got is Damage.INCOMPLETE_PAYLOAD and p == 0 and len(buf) == want:
                        want = HEADER_SIZE + HEADER.unpack_from(buf)[0]  # one big record
                        buf = os.pread(self._fd, want, self._pos)
                        continue
                    break
                yield self.offset, bytes(buf[got.payload_start : got.end])
                self.offset += 1
                p = got.end
            self._pos += p
            if self.offset < until and p == 0:
                # End of this file: the entry is in the next segment, or this
                # one was rewritten by a compaction. Look it up by name once.
                if stalled:
                    raise WalError(f"entry {self.offset} is not in {self.directory}")
                stalled = True
                self.close()
            elif p:
                stalled = False
