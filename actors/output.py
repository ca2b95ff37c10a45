"""The front's stdout: reply lines written whole, and marked answered in
the inbox only as they go into the pipe.

A write of at most PIPE_BUF bytes to a pipe is atomic, and one that finds
room in the pipe completes without sleeping, so a SIGKILL cannot cut it.
So replies are written as chunks of whole lines, at most PIPE_BUF bytes
each, only when poll says the pipe has a free slot (a page: room for the
whole chunk). Just before each chunk is written, the lines it answers are
marked in the inbox (one write to `front.answered`); nothing else runs
between the two syscalls. A front killed between them leaves that one
chunk's requests without a reply: the one write in doubt, lost, never
repeated. Replies not yet written are not marked, so a successor answers
them (actors/front.py says how).

A reply longer than PIPE_BUF (a large wal_read, a wal_scan) is written in
one write once the pipe has room for all of it (the pipe is grown for it
if need be, up to /proc/sys/fs/pipe-max-size); a line larger than the
biggest pipe the kernel allows is written with a blocking write, the one
case a SIGKILL can cut a line. stdout that is not a pipe (a file, a
terminal) takes every write at once.

While more than HIGH_WATER bytes wait (the reader is slow), the front
stops reading stdin: back-pressure, instead of an unbounded buffer.

A reader that closes stdout (`walnode ... | head -n 3`) makes the next
write fail with EPIPE: that is StdoutClosed, not a crash (actors/front.py
stops; no successor could write either).
"""

from __future__ import annotations

import fcntl
import os
import select
import stat
import termios
import time
from collections import deque

from actors.inbox import Inbox
from wal.fsutil import write_all

PIPE_BUF = select.PIPE_BUF
PAGE = 4096
HIGH_WATER = 1 << 20  # queued reply bytes past which stdin is not read
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


class StdoutClosed(Exception):
    """The reader of stdout closed it: no reply can be written any more."""


class Output:
    def __init__(self, fd: int, inbox: Inbox) -> None:
        self.fd = fd
        self.inbox = inbox
        self.is_pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
        # Blocks of whole lines (each with its newline) and the inbox starts of
        # the request lines they answer, one per line: a run of replies
        # formatted in bulk stays one bytes object until it is written.
        self._blocks: deque[tuple[bytes, list[int]]] = deque()
        self._pos = 0  # bytes of the first block already written
        self._done = 0  # lines of the first block already written
        self.queued_bytes = 0
        self._poll = select.poll()
        self._poll.register(fd, select.POLLOUT)

    def __bool__(self) -> bool:
        return bool(self._blocks)

    def add(self, text: str, start: int) -> None:
        """Queue a reply line (without newline) that answers the line at `start`."""
        self.add_lines((text + "\n").encode(), [start])

    def add_lines(self, data: bytes, starts: list[int]) -> None:
        """Queue reply lines, each ending in a newline, answering the lines at
        `starts` (one each, in order)."""
        if data:
            self._blocks.append((data, starts))
            self.queued_bytes += len(data)

    def backed_up(self) -> bool:
        return self.queued_bytes >= HIGH_WATER

    def _first_line(self) -> int:
        """The length of the next line to write."""
        data = self._blocks[0][0]
        return data.index(b"\n", self._pos) + 1 - self._pos

    def waiting_for_room(self) -> bool:
        """The next line is longer than PIPE_BUF and the pipe lacks room for
        it: poll says nothing useful (a free page is not enough), so check
        again after a short sleep instead."""
        return bool(self._blocks) and self.is_pipe and self._first_line() > PIPE_BUF

    def write_ready(self) -> None:
        """Write every chunk the pipe takes now without blocking."""
        while self._blocks:
            first = self._first_line()
            if not self.is_pipe:
                self._write(*self._take(PIPE_BUF))
            elif first <= PIPE_BUF:
                if not self._poll.poll(0):
                    return
                self._write(*self._take(PIPE_BUF))
            elif self._room() >= first:
                self._write(*self._take(first))
            elif not self._grow(first):
                self._write(*self._take(first))  # larger than any pipe: may block
            else:
                return

    def drain(self, deadline: float | None = None) -> bool:
        """Write everything, waiting for the reader; False if `deadline`
        (time.monotonic) passed first."""
        while self._blocks:
            self.write_ready()
            if not self._blocks:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            wait = 10 if self.waiting_for_room() else 100
            self._poll.poll(wait if left is None else min(wait, max(1, int(left * 1000))))
        return True

    def _take(self, limit: int) -> tuple[list[bytes], list[int]]:
        """Whole lines from the front of the queue, at most `limit` bytes (or
        the first line alone if it is longer), and the starts they answer."""
        pieces: list[bytes] = []
        starts: list[int] = []
        size = 0
        while self._blocks and size < limit:
            data, block_starts = self._blocks[0]
            pos = self._pos
            end = len(data)
            if end - pos > limit - size:  # not all of the block: up to its last line that fits
                end = data.rfind(b"\n", pos, pos + limit - size) + 1
                if end == 0:
                    if size:
                        break
                    end = data.index(b"\n", pos) + 1  # a line longer than the limit, alone
            count = data.count(b"\n", pos, end)
            pieces.append(data[pos:end] if pos or end < len(data) else data)
            starts += block_starts[self._done : self._done + count]
            size += end - pos
            if end < len(data):
                self._pos = end
                self._done += count
                break
            self._blocks.popleft()
            self._pos = self._done = 0
        return pieces, starts

    def _write(self, pieces: list[bytes], starts: list[int]) -> None:
        data = b"".join(pieces)
        self.queued_bytes -= len(data)
        self.inbox.answered_many(starts)
        self.inbox.sync_marks()  # the marks, then the lines: nothing runs between them
        try:
            write_all(self.fd, data)
        except (BrokenPipeError, ConnectionResetError) as err:  # EPIPE; a socket's reset
            raise StdoutClosed(str(err)) from err

    def _room(self) -> int:
        """Bytes the pipe surely takes without sleeping: whole free pages,
        counting each unread byte's page as possibly half empty."""
        capacity = fcntl.fcntl(self.fd, F_GETPIPE_SZ)
        unread = int.from_bytes(
            fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"), "little", signed=True
        )
        used_pages = 2 * -(-unread // PAGE) + 1
        return capacity - used_pages * PAGE - PAGE

    def _grow(self, size: int) -> bool:
        """Make the pipe big enough for `size` bytes at once; False if it cannot be."""
        want = 1 << max(16, (3 * size + 3 * PAGE).bit_length())
        if fcntl.fcntl(self.fd, F_GETPIPE_SZ) >= want:
            return True
        try:
            fcntl.fcntl(self.fd, F_SETPIPE_SZ, want)
        except OSError:
            return False
        return True
