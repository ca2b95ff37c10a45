"""Zero-filling the active segment ahead of its records (docs/FORMAT.md,
"Preallocation"), mostly off the writer's thread.

Zeros written and fsynced ahead of the records make an append's fdatasync
write data blocks only: the file's size and extents are durable already.
Writing 4 MiB of zeros and fsyncing them costs milliseconds, so a segment
asks for the next chunk while half of the current one is still room, and a
`BackgroundFill` thread writes it (like etcd's filePipeline, which prepares
the next file in a goroutine). The writer writes only into zeros that a
finished fill made durable; a batch that would reach into a fill still in
flight waits for it, and with no room at all (a new segment, a burst that
outran the fills) the writer fills a small first chunk itself.

A fill writes through its own open file description (not a dup of the
writer's), so a writeback error it meets is still reported to the writer's
own fdatasync (Linux reports such an error once per open file description).
A failed fill is never taken for room: its error is raised in the writer
(fsyncgate: a failed fsync is not retried), or, on a full disk, its zeros
are cut off again and the writer appends without room.
"""

from __future__ import annotations

import os
import threading

from wal.fsutil import DISK_FULL_ERRNOS

PREALLOCATE_CHUNK = 4 << 20  # a background fill's size (at most a quarter of a segment)
FIRST_CHUNK = 256 << 10  # filled on the writer's thread when no zeros are left at all
PAGE = 4096  # the smallest chunk, for tiny segments (tests)
_ZEROS = bytes(1 << 20)


def chunk_for(limit: int) -> int:
    """A background fill's size in a segment of at most `limit` bytes."""
    return max(PAGE, min(PREALLOCATE_CHUNK, limit // 4))


def first_chunk_for(limit: int) -> int:
    """The writer's own fill when it has no room: small, so the stall is short."""
    return min(FIRST_CHUNK, chunk_for(limit))


def write_zeros(fd: int, start: int, end: int) -> None:
    """pwrite zeros over [start, end) of `fd`'s file (no sync)."""
    pos = start
    while pos < end:
        pos += os.pwrite(fd, _ZEROS[: min(len(_ZEROS), end - pos)], pos)


def zero_fill(fd: int, start: int, end: int) -> None:
    """Write zeros over [start, end) of `fd`'s file, then fsync it. On a full
    disk the zeros are cut off again (they are only zeros: no sync needed)
    and the OSError is raised; any other error is raised as it is."""
    try:
        write_zeros(fd, start, end)
        os.fsync(fd)
    except OSError as err:
        if err.errno in DISK_FULL_ERRNOS:
            os.ftruncate(fd, start)
        raise


class BackgroundFill:
    """One fill of [start, end) of the file at `path`, in a thread of its own.
    The writer must not write past `start` until `wait` returned."""

    def __init__(self, path: str, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.error: OSError | None = None
        # opened here, on the writer's thread: the path is the segment's now
        self._fd = os.open(path, os.O_WRONLY)
        self._thread = threading.Thread(target=self._run, name="zero-fill", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            zero_fill(self._fd, self.start, self.end)
        except OSError as err:
            self.error = err
        finally:
            os.close(self._fd)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> bool:
        """Wait for the fill: True if its zeros are durable room, False if the
        disk was full (nothing was added). Any other failure is raised."""
        self._thread.join()
        if self.error is None:
            return True
        if self.error.errno in DISK_FULL_ERRNOS:
            return False
        raise self.error
