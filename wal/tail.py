"""Follow a log that another process writes: read-only, in offset order.

The compactor uses this to apply entries to its state machine without the
writer shipping payloads to it. It only reads entries the caller knows are
written (below the writer's acknowledged offset), so it never meets a
record that is still being written: a record there that fails its CRC is
rot, and is yielded as damaged (payload None) at its offset, not an error.
A sealed segment is followed through its index file, so even a damaged
length field costs one entry. After a compaction rewrites or removes the
segment it was reading, it finds its place again by file name. The newest
segment is zero-filled past its data (preallocated): a header of zeros is
where its records end, never a damaged entry.
"""

from __future__ import annotations

import bisect
import itertools
import mmap
import os
import struct
from array import array
from collections.abc import Callable, Iterator

from wal import checkpoint, index
from wal.errors import CorruptionError, WalError
from wal.log import read_start_offset
from wal.record import HEADER, HEADER_SIZE, LENGTH_MASK, Damage, Decoded, crc32, decode_at
from wal.segment import parse_name

CHUNK = 1 << 20
# (payloads, damaged): consecutive entries' payloads (None: unreadable), and for
# each None its index in the run, file and byte
Run = tuple[list[bytes | None], list[tuple[int, str, int]]]
_LENGTH_SEEDS: dict[int, int] = {}  # CRC-32 of a record's four length bytes, by length


class LogTail:
    def __init__(self, directory: str, offset: int) -> None:
        self.directory = directory
        self.offset = offset  # the next entry to return
        self._fd = -1
        self._path = ""
        self._pos = 0  # byte of the next record in the open file
        self._base = 0
        self._index: index.LoadedIndex | None = None  # the open segment's, if sealed
        # Where the open segment's records start, as far as known without a scan: a
        # sealed one's index, or the newest one's checkpointed prefix (wal/checkpoint.py);
        # the last of them ends at _known_end. None: the segment is walked by headers.
        self._known: memoryview | array | None = None
        self._known_end = 0
        self._names: list[tuple[int, str]] = []  # the last listing: (base, name), in order
        self.damage_at: tuple[str, int] | None = None  # file and byte of the last damaged entry

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._index is not None:
            self._index.close()
            self._index = None
        self._known = None

    def _list(self) -> list[tuple[int, str]]:
        self._names = sorted(
            (b, n) for n in os.listdir(self.directory) if (b := parse_name(n)) is not None
        )
        return self._names

    def _holding(self, offset: int, fresh: bool) -> tuple[int, str, bool]:
        """The segment holding `offset` (base, name, sealed). The directory is
        listed again only when the cached listing cannot tell (the newest
        segment may have rolled since), so following 10,000 segments does not
        list 10,000 times."""
        names = self._names if not fresh and self._names else self._list()
        i = bisect.bisect_right(names, (offset, "\uffff")) - 1
        if not fresh and (i < 0 or i == len(names) - 1):
            return self._holding(offset, True)
        start = read_start_offset(self.directory) if fresh else None
        if i < 0 or (start is not None and offset < start):
            first = start if start is not None else (names[0][0] if names else 0)
            raise WalError(f"entry {offset} is no longer in the log (it starts at {first})")
        base, name = names[i]
        return base, name, i < len(names) - 1

    def _open_for(self, offset: int) -> None:
        """Open the segment holding `offset` and find its record."""
        try:
            base, name, sealed = self._holding(offset, False)
            fd = os.open(os.path.join(self.directory, name), os.O_RDONLY)
        except FileNotFoundError:  # compacted or rewritten since the listing
            base, name, sealed = self._holding(offset, True)
            fd = os.open(os.path.join(self.directory, name), os.O_RDONLY)
        self.close()
        self._path = os.path.join(self.directory, name)
        self._fd = fd
        self._base = base
        size = os.fstat(self._fd).st_size
        if sealed:
            self._index = index.load(index.index_path(self._path), base, size)
        if self._index is not None:
            self._known, self._known_end = self._index.positions, size
            i = offset - base
            self._pos = self._known[i] if i < len(self._known) else size
            return
        pos, skip = self._checkpointed(offset - base, size)
        for _ in range(skip):  # skip to the entry: headers only
            head = os.pread(self._fd, HEADER_SIZE, pos)
            if len(head) < HEADER_SIZE:
                raise WalError(f"entry {offset} is not in {self._path} yet")
            pos += HEADER_SIZE + (HEADER.unpack(head)[0] & LENGTH_MASK)
        self._pos = pos

    def _checkpointed(self, skip: int, size: int) -> tuple[int, int]:
        """Where the newest segment's `skip`-th record starts, as far as its
        checkpoint (wal/checkpoint.py) tells, and how many records are left to
        skip from there: a restart then walks headers only past the prefix."""
        if not size:
            return 0, skip
        with mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ) as m:
            prefix = checkpoint.load(checkpoint.path_for(self._path), self._base, m)
        if prefix is None:
            return 0, skip
        self._known, self._known_end = prefix.positions, prefix.size  # read as runs, too
        n = min(skip, len(prefix.positions))
        return (prefix.positions[n] if n < len(prefix.positions) else prefix.size), skip - n

    def read(self, until: int) -> Iterator[tuple[int, bytes | None]]:
        """Yield (offset, payload) for every entry from here up to `until`
        (exclusive); payload None for an entry whose record cannot be read
        (`damage_at` then says where), and b"" for an epoch-start record (no
        client data: the state machine's apply leaves the state as it is for
        an empty payload)."""
        for payloads, damaged in self.read_runs(until):
            first = self.offset - len(payloads)
            where = {i: (path, byte) for i, path, byte in damaged}
            for i, payload in enumerate(payloads):
                if payload is None:
                    self.damage_at = where[i]
                yield first + i, payload

    def read_runs(self, until: int) -> Iterator[Run]:
        """read, in runs: (payloads, damaged) for the consecutive entries from
        here up to `until`, a chunk of a segment at a time (one tight loop per
        chunk, no generator step per entry: at known positions, or by the
        headers in the newest segment past its checkpointed prefix). `damaged` names each None of
        the run: (its index in the run, file, byte); it is almost always empty.
        `offset` moves past a run as it is yielded."""
        stalled = 0
        while self.offset < until:
            if self._fd < 0:
                self._open_for(self.offset)
            before = self.offset
            if self._known is not None and self.offset - self._base < len(self._known):
                run = self._known_run(until)
                if run[0]:
                    yield run
            elif self._index is None:  # past a checkpointed prefix, or without one
                payloads: list[bytes | None] = []
                damaged: list[tuple[int, str, int]] = []
                try:
                    self._scanned_run(until, payloads, damaged)
                except CorruptionError:  # what was read before it is still the log's
                    if payloads:
                        yield payloads, damaged
                    raise
                if payloads:
                    yield payloads, damaged
            if self.offset != before:
                stalled = 0
            elif self.offset < until:
                # End of this file: the entry is in the next segment, or this
                # one was rewritten by a compaction. Look it up by name, then
                # once more in a fresh listing.
                if stalled >= 2:
                    self._stalled()
                stalled += 1
                self.close()
                if stalled == 2:
                    self._names = []

    def _known_run(self, until: int) -> Run:
        """Records at known positions (a sealed segment's index, the newest's
        checkpointed prefix): one pread per chunk, and the chunk as one run. A
        record whose length field has no flag, ends where the next starts and
        passes its CRC is taken in the loop; any other is decoded by decode_at,
        and is valid only if it ends where the next starts."""
        assert self._known is not None
        positions, size = self._known, self._known_end
        first = self.offset - self._base
        last = min(len(positions), until - self._base)
        start = positions[first]
        # up to CHUNK bytes (the last record may end past it), at least one record
        fits = bisect.bisect_right(positions, start + CHUNK, first, last)
        stop = last if fits == last else max(first + 1, fits - 1)
        end = positions[stop] if stop < len(positions) else size
        buf = os.pread(self._fd, end - start, start)
        bounds = [p - start for p in positions[first:stop].tolist()]
        bounds.append(end - start)
        payloads: list[bytes | None] = []
        damaged: list[tuple[int, str, int]] = []
        append = payloads.append
        unpack = HEADER.unpack_from
        crc_of = crc32  # a local: the loop's lookups
        seeds = _LENGTH_SEEDS
        for s, e in itertools.pairwise(bounds):
            field, crc = unpack(buf, s)
            if s + HEADER_SIZE + field == e:  # no flag set, and it ends where the next starts
                payload = buf[s + HEADER_SIZE : e]
                seed = seeds.get(field)
                if seed is None:
                    seed = seeds[field] = crc_of(field.to_bytes(4, "little"))
                if crc_of(payload, seed) == crc:
                    append(payload)
                    continue
            got = decode_at(buf, s)
            if type(got) is Decoded and got.end == e and not got.lost:
                append(b"" if got.epoch_start is not None else buf[got.payload_start : e])
            else:
                damaged.append((len(payloads), self._path, start + s))
                self.damage_at = (self._path, start + s)
                append(None)
        self._pos = end
        self.offset += len(payloads)
        return payloads, damaged

    def _stalled(self) -> None:
        """The entry should be here and is not: name the file and byte."""
        head = os.pread(self._fd, HEADER_SIZE, self._pos) if self._fd >= 0 else b""
        if len(head) == HEADER_SIZE and any(head):
            length = HEADER.unpack(head)[0] & LENGTH_MASK
            raise CorruptionError(
                self._path,
                self._pos,
                f"entry {self.offset}'s record claims {length} bytes, past the end of the "
                f"file (a damaged length field)",
            )
        raise WalError(f"entry {self.offset} is not in {self.directory}")

    def _scanned_run(
        self, until: int, payloads: list[bytes | None], damaged: list[tuple[int, str, int]]
    ) -> None:
        """A segment without known positions (the newest, past its checkpointed
        prefix): records walked by their headers in one chunk, appended to
        `payloads` (and each None's place to `damaged`). Plain records are
        taken by _plain_records' loop; each record it stops at is decoded by
        decode_at and handled by the rules below (rot kept at its offset, zeros
        as the end of the data, a record crossing the chunk read again from
        its start). Never more than the `until - offset` entries the caller
        knows are written: bytes past them may still be being written."""
        origin = self._pos
        want = CHUNK
        buf = os.pread(self._fd, want, origin)
        p = 0
        left = until - self.offset
        try:
            while True:
                p = _plain_records(buf, p, left - len(payloads), payloads.append)
                if len(payloads) == left:
                    return
                got = decode_at(buf, p)
                if got is Damage.BAD_CRC and not any(buf[p : p + HEADER_SIZE]):
                    return  # preallocated zeros (a header of zeros never validates): no record here
                if got is Damage.BAD_CRC:
                    # written (below `until`), so not a tear: rot, kept at its offset
                    # as long as its length is believable (the next record decodes)
                    end = p + HEADER_SIZE + (HEADER.unpack_from(buf, p)[0] & LENGTH_MASK)
                    if len(payloads) + 1 < left and not self._next_decodes(buf, end, p):
                        if end == len(buf):
                            return  # the next record is past this chunk: read again from here
                        raise CorruptionError(
                            self._path,
                            origin + p,
                            f"entry {self.offset + len(payloads)}'s record fails its CRC and "
                            f"the one after it does not decode (a damaged length field?): the "
                            f"entries after it cannot be placed",
                        )
                    payload = None
                elif isinstance(got, Damage):
                    if got is Damage.INCOMPLETE_PAYLOAD and p == 0 and len(buf) == want:
                        # one big record
                        want = HEADER_SIZE + (HEADER.unpack_from(buf)[0] & LENGTH_MASK)
                        buf = os.pread(self._fd, want, origin)
                        continue
                    return  # the end of the chunk (read again from here) or of the data
                else:
                    end = got.end
                    payload = None if got.lost else buf[got.payload_start : end]
                    if got.epoch_start is not None:
                        payload = b""
                if payload is None:
                    self.damage_at = (self._path, origin + p)
                    damaged.append((len(payloads), *self.damage_at))
                payloads.append(payload)
                p = end
        finally:
            self._pos = origin + p
            self.offset += len(payloads)

    @staticmethod
    def _next_decodes(buf: bytes, end: int, p: int) -> bool:
        """True if a record decodes at `end`; also when it cannot be told because
        this bad record alone fills the chunk (it is then accepted)."""
        if end == len(buf):
            return p == 0
        return isinstance(decode_at(buf, end), Decoded)


def _plain_records(buf: bytes, p: int, most: int, append: Callable[[bytes], None]) -> int:
    """Append the payloads of up to `most` records from byte `p` of `buf` on,
    as long as each has no flag in its length field, ends inside `buf` and
    passes its CRC; return where the first one not taken starts. These are
    decode_at's checks for a plain record, in one loop without a call or a
    tuple per record (a flag makes the field at least 2**30, so such a record
    never seems to end inside a chunk); whatever it stops at is the caller's."""
    size = len(buf)
    unpack = HEADER.unpack_from
    crc_of = crc32  # a local: the loop's lookups
    seeds = _LENGTH_SEEDS
    try:
        for _ in itertools.repeat(None, most):
            field, crc = unpack(buf, p)
            start = p + HEADER_SIZE
            end = start + field
            if end > size:
                break
            payload = buf[start:end]
            seed = seeds.get(field)
            if seed is None:
                seed = seeds[field] = crc_of(field.to_bytes(4, "little"))
            if crc_of(payload, seed) != crc:
                break
            append(payload)
            p = end
    except struct.error:  # fewer than HEADER_SIZE bytes left
        pass
    return p
