"""The front's inbox: stdin lines read but not yet answered, kept across a front crash.

stdin is a pipe: what a front has read is gone from it. So stdin is not
read into the process at all. `take` splices each chunk from the pipe into
`front.inbox` in the run directory, in one syscall: the bytes are in the
pipe or in the file, never only in a process that can die. It then reads
the chunk back from the file before its lines are handled. The start of
each answered line (its byte position in the stream) is appended to
`front.answered` in the syscall before its reply's write
(actors/output.py). A restarted front reads both and gets back every line
its predecessor read but did not answer
(front.py decides what to answer). Both files live in the page cache,
which outlives the process. They are not meant to outlive the machine,
and neither is the pipe.

Marking lines answered just before their replies' write means a front killed
between the two leaves that one write's requests without a reply, never with two.

Costs are O(bytes read): each chunk is written once, lines are split
without re-joining what came before, and the inbox is rewritten (from its
oldest open line on, temp file, then rename; then the answered file the
same way) only once the answered bytes before that line are at least
COMPACT_BYTES and at least as many as the bytes kept, so each rewrite
copies no more than it drops. A request that stays open (a kv_get behind a
stalled compactor) therefore costs no rewrites at all.

A line longer than `max_line_bytes` is never held whole: once its bytes
pass the limit it is handed over as an OverlongLine (its first
PREFIX_BYTES, for the front to find a msg_id in), and the rest is skipped
up to its newline as it streams in. Its bytes still go through the inbox
file, but they count as answered, so compaction drops them.

File layouts: `front.inbox` is a header of two u64s (little-endian): the
stream position of its first data byte, and 1 if that byte lies inside an
over-long line already handed over (skip to the next newline), else 0;
then the raw bytes of stdin from there. `front.answered` is u64 line starts.

If the run directory cannot take a write (its disk is full, say), the
inbox removes its files and stops journaling. The front goes on serving;
only a front crash after that point loses the lines it had read.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from array import array
from collections.abc import Sequence
from itertools import accumulate
from operator import add, itemgetter

from wal.fsutil import write_all

log = logging.getLogger("front")

HEADER = struct.Struct("<QQ")  # base position, inside an over-long line
COMPACT_BYTES = 4 << 20
PREFIX_BYTES = 4096  # of an over-long line: where the front looks for its msg_id
COPY_CHUNK = 1 << 20


class OverlongLine(bytes):
    """The first PREFIX_BYTES of a line longer than the limit (the rest is never held)."""


class Inbox:
    def __init__(self, run_dir: str, max_line_bytes: int) -> None:
        self.path = os.path.join(run_dir, "front.inbox")
        self.marks_path = os.path.join(run_dir, "front.answered")
        self.max_line_bytes = max_line_bytes
        base, skipping, data = self._read_inbox()
        answered = set(self._read_marks())
        self.open: dict[int, None] = {}  # starts of lines not yet answered, oldest first
        self._base = base  # stream position of the inbox file's first data byte
        self._end = HEADER.size + len(data)  # the inbox file's size: where the next chunk goes
        self._splice = hasattr(os, "splice")  # off for a stdin that is not a pipe
        self._marks = array("Q")  # answered since the last sync_marks
        self._partial = bytearray()  # the line being read, never more than max_line_bytes
        self._skipping = skipping  # inside an over-long line handed over already
        self._pos = base  # stream position of the partial line (after what was split)
        #: lines the previous front read but did not answer: (start, line)
        self.unanswered = [(s, ln) for s, ln in self._split(data) if s not in answered]
        for start, _ in self.unanswered:
            self.open[start] = None
        self._fd = self._afd = -1
        self.journaling = True
        try:
            self._reopen()
            if os.fstat(self._fd).st_size < HEADER.size:
                os.pwrite(self._fd, HEADER.pack(base, skipping), 0)
                self._end = HEADER.size
        except OSError as err:
            self._stop_journaling(err)

    def _read_inbox(self) -> tuple[int, bool, bytes]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return 0, False, b""
        if len(raw) < HEADER.size:
            return 0, False, b""
        base, skipping = HEADER.unpack_from(raw)
        return base, bool(skipping), raw[HEADER.size :]

    def _read_marks(self) -> array:
        marks = array("Q")
        try:
            with open(self.marks_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return marks
        marks.frombytes(raw[: len(raw) - len(raw) % marks.itemsize])
        return marks

    def _stop_journaling(self, err: OSError) -> None:
        log.warning(
            "cannot keep the inbox in %s (%s): going on without it; a front crash from "
            "now on loses the requests it had read but not answered",
            os.path.dirname(self.path),
            err,
        )
        self.journaling = False
        for fd in (self._fd, self._afd):
            if fd >= 0:
                os.close(fd)
        for path in (self.path, self.marks_path):
            try:
                os.remove(path)
            except OSError:
                pass

    def close(self) -> None:
        """Close the files (the front's exit closes them anyway; tests make many inboxes)."""
        for fd in (self._fd, self._afd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._afd = -1

    def _reopen(self) -> None:
        for fd in (self._fd, self._afd):
            if fd >= 0:
                os.close(fd)
        # not O_APPEND for the inbox: splice refuses such files; _end says where
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._afd = os.open(self.marks_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _split(self, data: bytes) -> list[tuple[int, bytes]]:
        """Split into complete lines (start, bytes without the newline); keep
        the rest. A line past the limit comes out once, as an OverlongLine,
        as soon as it passes it."""
        lines: list[tuple[int, bytes]] = []
        begin = 0
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                self._pos += len(data)
                return lines
            self._skipping = False
            begin = nl + 1
            self._pos += begin
        limit = self.max_line_bytes
        if self._partial and (nl := data.find(b"\n", begin)) >= 0:  # the line it ends
            self._add_line(lines, bytes(self._partial) + data[begin:nl])
            self._partial.clear()
            begin = nl + 1
        last = data.rfind(b"\n", begin)
        if not self._partial and last >= begin:
            # the whole lines in one split; their starts by a running sum (in C)
            parts = data[begin:last].split(b"\n")
            lengths = list(map(len, parts))
            if max(lengths) <= limit:
                starts = list(map(add, accumulate(lengths, initial=self._pos), range(len(parts))))
                lines += zip(starts, parts, strict=True)
                self._pos = starts[-1] + lengths[-1] + 1
            else:
                for part in parts:
                    self._add_line(lines, part)
            begin = last + 1
        rest = len(data) - begin
        if len(self._partial) + rest > limit:
            head = bytes(self._partial[:PREFIX_BYTES]) + data[begin : begin + PREFIX_BYTES]
            lines.append((self._pos, OverlongLine(head[:PREFIX_BYTES])))
            self._pos += len(self._partial) + rest
            self._partial.clear()
            self._skipping = True
        else:
            self._partial += data[begin:]
        return lines

    def _add_line(self, lines: list[tuple[int, bytes]], line: bytes) -> None:
        """The next complete line, as an OverlongLine if it is past the limit."""
        start = self._pos
        self._pos = start + len(line) + 1
        if len(line) > self.max_line_bytes:
            line = OverlongLine(line[:PREFIX_BYTES])
        lines.append((start, line))

    # -- the front's calls ---------------------------------------------------

    def take(self, fd: int, limit: int) -> bytes:
        """Up to `limit` bytes from `fd` (stdin), journaled; b"" at its end."""
        if self.journaling and self._splice:
            try:
                n = os.splice(fd, self._fd, limit, offset_dst=self._end)
            except OSError as err:
                if err.errno != errno.EINVAL:  # EINVAL: stdin is not a pipe
                    self._stop_journaling(err)
                self._splice = False
            else:
                chunk = os.pread(self._fd, n, self._end)
                self._end += n
                return chunk
        chunk = os.read(fd, limit)
        if self.journaling and chunk:
            try:
                # a window between read and write here; the splice path has none
                if os.pwrite(self._fd, chunk, self._end) != len(chunk):
                    raise OSError(errno.EIO, "short write to the inbox")
                self._end += len(chunk)
            except OSError as err:
                self._stop_journaling(err)
        return chunk

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        """Split a chunk `take` returned into lines; returns the complete ones, now open."""
        lines = self._split(chunk)
        self.open.update(dict.fromkeys(map(itemgetter(0), lines)))
        return lines

    def finish(self) -> list[tuple[int, bytes]]:
        """At end of input: a last line without a newline, if any, now open."""
        if not self._partial:
            return []
        line = (self._pos, bytes(self._partial))
        self._pos += len(self._partial)
        self._partial.clear()
        self.open[line[0]] = None
        return [line]

    def answered(self, start: int) -> None:
        """The line at `start` needs nothing more (answered, or never answerable)."""
        self.answered_many((start,))

    def answered_many(self, starts: Sequence[int]) -> None:
        """The lines at `starts` need nothing more, in order; each still open is
        marked once (open's values are None, so pop's 0 means not open)."""
        pop = self.open.pop
        self._marks.extend([start for start in starts if pop(start, 0) is None])

    def sync_marks(self) -> None:
        """Record the lines answered since the last call; before their replies print."""
        if not self.journaling:
            self._marks = array("Q")
            return
        if self._marks:
            try:
                write_all(self._afd, self._marks.tobytes())
            except OSError as err:
                self._stop_journaling(err)
            self._marks = array("Q")

    def tidy(self) -> None:
        """Rewrite the inbox from its oldest open line once what lies before
        that line (answered) is large and at least what would be kept."""
        if not self.journaling:
            return
        low = next(iter(self.open), self._pos)
        dropped = low - self._base
        kept = self._end - HEADER.size - dropped
        if dropped < COMPACT_BYTES or dropped < kept:
            return
        try:
            self._compact(low, kept)
        except OSError as err:
            self._stop_journaling(err)

    def _compact(self, low: int, kept: int) -> None:
        skipping = self._skipping and low == self._pos  # low is inside an over-long line
        src = HEADER.size + (low - self._base)
        marks = array("Q")
        line_start = None if skipping else low
        with open(self.path + ".tmp", "wb") as f:
            f.write(HEADER.pack(low, skipping))
            done = 0
            while done < kept:
                piece = os.pread(self._fd, min(COPY_CHUNK, kept - done), src + done)
                if not piece:
                    raise OSError(errno.EIO, "the inbox is shorter than it was written")
                f.write(piece)
                begin = 0
                while (nl := piece.find(b"\n", begin)) >= 0:
                    if line_start is not None and line_start not in self.open:
                        marks.append(line_start)
                    line_start = low + done + nl + 1
                    begin = nl + 1
                done += len(piece)
        if self._skipping and line_start is not None and line_start not in self.open:
            marks.append(line_start)  # the over-long line being skipped, answered already
        os.replace(self.path + ".tmp", self.path)  # inbox first: stale marks are harmless
        with open(self.marks_path + ".tmp", "wb") as f:
            f.write(marks.tobytes())
        os.replace(self.marks_path + ".tmp", self.marks_path)
        self._reopen()
        self._base = low
        self._end = HEADER.size + kept
