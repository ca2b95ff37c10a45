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
Once the inbox passes COMPACT_BYTES, it is rewritten from its oldest open
line on (temp file, then rename; then the answered file the same way), so it
holds about what is in flight.

File layouts: `front.inbox` is a u64 (little-endian) stream position of its
first byte, then the raw bytes of stdin from there; `front.answered` is u64
line starts.

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

from wal.fsutil import write_all

log = logging.getLogger("front")

BASE = struct.Struct("<Q")
COMPACT_BYTES = 4 << 20


class Inbox:
    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, "front.inbox")
        self.marks_path = os.path.join(run_dir, "front.answered")
        base, data = self._read_inbox()
        answered = set(self._read_marks())
        self.open: dict[int, None] = {}  # starts of lines not yet answered, oldest first
        self._end = BASE.size + len(data)  # the inbox file's size: where the next chunk goes
        self._splice = hasattr(os, "splice")  # off for a stdin that is not a pipe
        self._marks = array("Q")  # answered since the last sync_marks
        self._partial = b""
        self._pos = base  # stream position after the last byte split into lines
        #: complete lines the previous front read but did not answer: (start, line)
        self.unanswered = [(s, ln) for s, ln in self._split(data) if s not in answered]
        for start, _ in self.unanswered:
            self.open[start] = None
        self._fd = self._afd = -1
        self.journaling = True
        try:
            self._reopen()
            if os.fstat(self._fd).st_size < BASE.size:
                os.pwrite(self._fd, BASE.pack(base), 0)
                self._end = BASE.size
        except OSError as err:
            self._stop_journaling(err)

    def _read_inbox(self) -> tuple[int, bytes]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return 0, b""
        if len(raw) < BASE.size:
            return 0, b""
        return BASE.unpack_from(raw)[0], raw[BASE.size :]

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

    def _reopen(self) -> None:
        for fd in (self._fd, self._afd):
            if fd >= 0:
                os.close(fd)
        # not O_APPEND for the inbox: splice refuses such files; _end says where
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._afd = os.open(self.marks_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _split(self, data: bytes) -> list[tuple[int, bytes]]:
        """Split into complete lines (start, bytes without the newline); keep the rest."""
        lines = []
        buf = self._partial + data
        start = self._pos
        begin = 0
        while (nl := buf.find(b"\n", begin)) >= 0:
            lines.append((start + begin, buf[begin:nl]))
            begin = nl + 1
        self._partial = buf[begin:]
        self._pos = start + begin
        return lines

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
        for start, _ in lines:
            self.open[start] = None
        return lines

    def finish(self) -> list[tuple[int, bytes]]:
        """At end of input: a last line without a newline, if any, now open."""
        if not self._partial:
            return []
        line = (self._pos, self._partial)
        self._pos += len(self._partial)
        self._partial = b""
        self.open[line[0]] = None
        return [line]

    def answered(self, start: int) -> None:
        """The line at `start` needs nothing more (answered, or never answerable)."""
        if start in self.open:
            del self.open[start]
            self._marks.append(start)

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
        """Rewrite the inbox from its oldest open line once it is large."""
        if self.journaling and self._end > COMPACT_BYTES:
            try:
                self._compact()
            except OSError as err:
                self._stop_journaling(err)

    def _compact(self) -> None:
        low = next(iter(self.open), self._pos)
        base, data = self._read_inbox()
        keep = data[low - base :]
        marks = array("Q")
        begin = 0
        while (nl := keep.find(b"\n", begin)) >= 0:
            if low + begin not in self.open:
                marks.append(low + begin)
            begin = nl + 1
        for path, content in ((self.path, BASE.pack(low) + keep), (self.marks_path, marks)):
            with open(path + ".tmp", "wb") as f:
                f.write(content)
            os.replace(path + ".tmp", path)  # inbox first: stale marks are harmless
        self._reopen()
        self._end = BASE.size + len(keep)
