"""The next segment, prepared ahead by a background thread (etcd's filePipeline).

    DIR/wal/next.prefill    max_segment_bytes of zeros, fsynced, its entry fsynced

A roll takes the prepared file by renaming it to the new segment's name,
so the writer's thread pays a rename and a directory fsync instead of a
create and a 4 MiB zero-fill, and the new segment's fdatasyncs write data
blocks only: its size and extents were durable before it was offered
(docs/FORMAT.md, "Preallocation"). The fill is a file of its own, never the
active segment: filling the active segment in the background made every
fdatasync of it write the fill's dirty zeros as well (docs/BENCHMARKS.md).

The name is not a segment's, so nothing ever reads the file as part of the
log; Log.open removes one a stop or a crash left (wal/layout.py). It is
written PIECE_BYTES at a time, each piece's writeback started and the one
before waited for (sync_file_range), so the closing fsync never puts a
whole segment's zeros in the disk's queue ahead of the appends'
fdatasyncs. On a full disk or an I/O error the file is removed and no
file is offered: the roll falls back to creating its segment (the count
of those is kept).
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass

from wal import faults
from wal.fsutil import fsync_dir, sync_range

PREPARED_NAME = "next.prefill"
PIECE_BYTES = 1 << 20
_ZEROS = bytes(PIECE_BYTES)


@dataclass(frozen=True)
class Prepared:
    """A ready file: `size` bytes of zeros, durable with its directory entry,
    open read-write at `fd` (the segment made from it keeps that descriptor)."""

    path: str
    fd: int
    size: int


@dataclass
class PrefillStats:
    """What the preparer did since it started (for metrics and tests)."""

    prepared: int = 0  # files made ready
    failed: int = 0  # fills given up: a full disk, an I/O error
    last_error: str | None = None


class _Cancelled(Exception):
    """The file being filled is no longer wanted (another size, a full disk, close)."""


class Preparer:
    """One background thread keeping at most one prepared file, of the size last asked."""

    def __init__(self, directory: str, size: int | None) -> None:
        """`size`: the file to make ready at once; None: none until `want`."""
        self.path = os.path.join(directory, PREPARED_NAME)
        self.directory = directory
        self.stats = PrefillStats()
        self._cond = threading.Condition()
        self._size: int | None = size  # the size wanted; None: none wanted (a full disk)
        self._ready: Prepared | None = None
        # taken and not renamed yet: a new fill now would truncate it (one name)
        self._handed_out = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="prefill", daemon=True)
        self._thread.start()

    # -- the writer's side -------------------------------------------------

    def take(self, size: int) -> Prepared | None:
        """The ready file if it has `size` bytes, for the caller to rename; else
        None (the roll then creates its segment itself). Never waits for a fill.
        The next file is started by the `want` after the rename."""
        with self._cond:
            ready = self._ready
            if ready is None or ready.size != size:
                return None
            self._ready = None
            self._handed_out = True
            return ready

    def want(self, size: int) -> None:
        """Keep a file of `size` bytes ready from now on (the segment size
        changed, or space is back): a ready file of another size is removed,
        a fill of another size given up. After a roll: the file it took is
        renamed, so the name is free for the next one."""
        with self._cond:
            self._size = size
            self._handed_out = False
            if self._ready is not None and self._ready.size != size:
                self._discard(self._ready)
                self._ready = None
            self._cond.notify()

    def discard(self) -> None:
        """Give the space back (the log's appends hit a full disk): remove the
        ready file, give up a fill, prepare nothing until `want`."""
        with self._cond:
            self._size = None
            if self._ready is not None:
                self._discard(self._ready)
                self._ready = None
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread and remove the file (Log.open removes a leftover too)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        if self._ready is not None:
            self._discard(self._ready)
            self._ready = None

    @property
    def ready(self) -> bool:
        return self._ready is not None

    # -- the thread --------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (
                    self._ready is not None or self._size is None or self._handed_out
                ):
                    self._cond.wait()
                if self._stopping or self._size is None:
                    return
                size = self._size
            prepared = self._prepare(size)
            with self._cond:
                if prepared is None:
                    continue
                if self._stopping or self._size != size:
                    self._discard(prepared)
                    continue
                self._ready = prepared
                self.stats.prepared += 1

    def _unwanted(self, size: int) -> bool:
        with self._cond:
            return self._stopping or self._size != size

    def _prepare(self, size: int) -> Prepared | None:
        """Create and fill the file, make it and its entry durable; None (and
        no file left) if it stopped being wanted or the disk refused."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self._fill(fd, size)
            faults.point("prefill.filled")
            os.fsync(fd)  # its size and extents durable: the segment's fdatasyncs carry none
            faults.point("prefill.synced")
            fsync_dir(self.directory)
        except (OSError, _Cancelled) as err:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.remove(self.path)  # zeros, never a segment: no directory fsync needed
            if isinstance(err, OSError):  # a full disk, or an I/O error: nothing was offered
                self.stats.failed += 1
                self.stats.last_error = f"{err.strerror or err}"
                with self._cond:
                    if self._size == size:
                        self._size = None  # tried again at the next roll (Log.roll wants one)
            return None
        return Prepared(self.path, fd, size)

    def _fill(self, fd: int, size: int) -> None:
        """Zeros, PIECE_BYTES at a time, each piece's writeback started and the
        previous one's waited for: at most two pieces in the disk's queue."""
        previous: tuple[int, int] | None = None
        pos = 0
        while pos < size:
            if self._unwanted(size):
                raise _Cancelled
            n = os.pwrite(fd, _ZEROS[: min(PIECE_BYTES, size - pos)], pos)
            sync_range(fd, pos, n, wait=False)
            if previous is not None:
                sync_range(fd, *previous, wait=True)
            previous = (pos, n)
            pos += n
            if pos >= size // 2 > pos - n:
                faults.point("prefill.half_filled")

    def _discard(self, prepared: Prepared) -> None:
        os.close(prepared.fd)
        with contextlib.suppress(FileNotFoundError):
            os.remove(prepared.path)
