"""wal/tail.py, the compactor's reader of the log, on a preallocated segment."""

from __future__ import annotations

import itertools
import os
import tempfile
import zlib
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wal import CorruptionError, Log, WalError, record
from wal import tail as tail_module
from wal.record import HEADER, HEADER_SIZE, LENGTH_MASK, Damage, decode_at
from wal.segment import segment_name
from wal.tail import LogTail


def test_the_tail_stops_at_the_preallocated_zeros(tmp_path):
    """The newest segment is zero-filled past its data: the tailer reads every
    entry, and asked for one more it finds none (never a damaged entry made
    of zeros), then reads it once it is written."""
    wal = os.fspath(tmp_path)
    log, _ = Log.open(wal)
    try:
        for i in range(5):
            log.append(b"set k%d=%d" % (i, i))
        log.sync()
        assert os.path.getsize(os.path.join(wal, segment_name(0))) > log.total_bytes
        tail = LogTail(wal, 0)
        try:
            assert list(tail.read(5)) == [(i, b"set k%d=%d" % (i, i)) for i in range(5)]
            with pytest.raises(WalError, match="entry 5 is not in"):
                list(tail.read(6))
            assert tail.offset == 5 and tail.damage_at is None
            log.append(b"set k5=5")
            log.sync()
            assert list(tail.read(6)) == [(5, b"set k5=5")]
        finally:
            tail.close()
    finally:
        log.close()


def test_sealed_segments_are_read_in_runs(tmp_path, monkeypatch):
    """A sealed segment is followed at its index's positions a chunk at a time
    (read_runs: one run per chunk, here per segment), its records checked in
    one loop: only the newest segment's records (no checkpoint yet) are
    decoded one by one."""
    wal = os.fspath(tmp_path)
    log, _ = Log.open(wal, max_segment_bytes=4096)
    try:
        expected = []
        for i in range(600):
            expected.append(b"set k%d=%d" % (i % 7, i))
            log.append(expected[-1])
        log.sync()
        segments = log.segments()
        assert len(segments) == 3 and all(s.sealed for s in segments[:-1])
        decoded = []
        real = tail_module.decode_at
        monkeypatch.setattr(
            tail_module, "decode_at", lambda buf, pos: decoded.append(pos) or real(buf, pos)
        )
        tail = LogTail(wal, 0)
        try:
            runs = list(tail.read_runs(600))
        finally:
            tail.close()
        assert [p for payloads, _ in runs for p in payloads] == expected
        assert all(damaged == [] for _, damaged in runs)
        assert len(runs) == len(segments)
        assert len(decoded) <= segments[-1].entries + 1  # the newest's, and the zeros after
    finally:
        log.close()


# -- the live tail's loop against the per-record walk it replaced ----------------


class PerRecordTail(LogTail):
    """LogTail with the newest segment walked as before the one-loop runs:
    decode_at for every record, one generator step per entry (the reference
    the loop must agree with, entry for entry and error for error)."""

    def _scanned_run(self, until, payloads, damaged):
        for _, payload in self._read_scanned(until):
            if payload is None:
                damaged.append((len(payloads), *self.damage_at))
            payloads.append(payload)

    def _read_scanned(self, until):
        origin = self._pos
        want = tail_module.CHUNK
        buf = os.pread(self._fd, want, origin)
        p = 0
        while self.offset < until:
            got = decode_at(buf, p)
            if got is Damage.BAD_CRC and not any(buf[p : p + HEADER_SIZE]):
                break
            if got is Damage.BAD_CRC:
                end = p + HEADER_SIZE + (HEADER.unpack_from(buf, p)[0] & LENGTH_MASK)
                if self.offset + 1 < until and not self._next_decodes(buf, end, p):
                    if end == len(buf):
                        break
                    raise CorruptionError(
                        self._path,
                        origin + p,
                        f"entry {self.offset}'s record fails its CRC and the one after it "
                        f"does not decode (a damaged length field?): the entries after it "
                        f"cannot be placed",
                    )
                payload = None
            elif isinstance(got, Damage):
                if got is Damage.INCOMPLETE_PAYLOAD and p == 0 and len(buf) == want:
                    want = HEADER_SIZE + (HEADER.unpack_from(buf)[0] & LENGTH_MASK)
                    buf = os.pread(self._fd, want, origin)
                    continue
                break
            else:
                end = got.end
                payload = None if got.lost else bytes(buf[got.payload_start : end])
                if got.epoch_start is not None:
                    payload = b""
            if payload is None:
                self.damage_at = (self._path, origin + p)
            self._pos = origin + end
            self.offset += 1
            yield self.offset - 1, payload
            p = end


def flagged(flags: int, payload: bytes) -> bytes:
    """A record with `flags` in its length field and a valid CRC (an epoch-start
    record when EPOCH_FLAG and 8 bytes, a lost marker with LOST_FLAG)."""
    length = (flags | len(payload)).to_bytes(4, "little")
    return length + record.checksum(length, payload).to_bytes(4, "little") + payload


records_st = st.lists(
    st.one_of(
        st.binary(max_size=40).map(lambda p: record.encode(p)[0]),
        st.binary(min_size=60, max_size=400).map(lambda p: record.encode(p)[0]),  # crosses chunks
        st.integers(0, 2**64 - 1).map(lambda e: record.encode_epoch_start(e)[0]),
        st.binary(max_size=20).map(record.encode_lost),
        st.tuples(
            st.sampled_from([record.EPOCH_FLAG, record.LOST_FLAG, record.EPOCH_FLAG | 1 << 31]),
            st.binary(max_size=12),
        ).map(lambda f: flagged(*f)),
        st.just(bytes(HEADER_SIZE + 4)),  # zeros in the middle (a record never written)
    ),
    max_size=30,
)
damage_st = st.lists(  # (kind, where as a fraction of the data, how much)
    st.tuples(
        st.sampled_from(["flip", "zeros", "garbage", "tear"]),
        st.floats(0, 1),
        st.integers(1, 24),
    ),
    max_size=3,
)


def damaged_segment(records: list[bytes], damage: list, zero_tail: int) -> bytes:
    data = bytearray(b"".join(records))
    for kind, where, size in damage:
        at = int(where * len(data))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << size % 8
        elif kind == "zeros":
            data[at : at + size] = bytes(len(data[at : at + size]))
        elif kind == "garbage":
            data[at:at] = bytes(range(200, 200 + size))
        else:  # a torn tail, or a record still being written past what is known
            del data[at:]
    return bytes(data) + bytes(zero_tail)


def trace(tail: LogTail, untils: list[int]) -> list:
    """What each read_runs(until) gives: its entries (offset, payload, and where
    each damaged one is), then how it ended, and where the tail stands."""
    out = []
    for until in untils:
        entries: list = []
        try:
            for payloads, damaged in tail.read_runs(until):
                first = tail.offset - len(payloads)
                where = {i: (path, byte) for i, path, byte in damaged}
                entries += [(first + i, p, where.get(i)) for i, p in enumerate(payloads)]
            ended = None
        except WalError as err:
            ended = (type(err).__name__, str(err))
        out.append((until, entries, ended, tail.offset, tail.damage_at, tail._pos))
    return out


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    records_st,
    damage_st,
    st.integers(0, 64),
    st.one_of(st.none(), records_st),
    st.sampled_from([16, 24, 64, 200, tail_module.CHUNK]),
    st.lists(st.integers(0, 12), min_size=1, max_size=6),
)
def test_the_live_tail_loop_reads_what_the_per_record_walk_read(
    records, damage, zero_tail, sealed, chunk, steps
):
    """The newest segment's one-loop runs give exactly what decode_at record by
    record gave: the same payloads at the same offsets, None with the same
    file and byte at every damaged entry (rot, a lost marker), b"" for an
    epoch-start record, zeros as the end of the data, and the same error and
    text where the log cannot be followed (a damaged length, a torn tail, an
    entry not written yet), over chunks small enough that records cross
    them; never an entry at or past `until` (what the writer has not said
    is written). With `sealed`, a segment before it without an index (walked
    the same way, then left for the next by name)."""
    with tempfile.TemporaryDirectory() as wal:
        base = 0
        if sealed is not None:
            with open(os.path.join(wal, segment_name(0)), "wb") as f:
                f.write(damaged_segment(sealed, [], 0))
            base = len(sealed)
        with open(os.path.join(wal, segment_name(base)), "wb") as f:
            f.write(damaged_segment(records, damage, zero_tail))
        untils = list(itertools.accumulate(steps))
        with mock.patch.object(tail_module, "CHUNK", chunk):
            traces = []
            for kind in (PerRecordTail, LogTail):
                tail = kind(wal, 0)
                try:
                    traces.append(trace(tail, untils))
                finally:
                    tail.close()
        assert traces[1] == traces[0]


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=3000), st.integers(0, 2**32 - 1), st.integers(0, 15))
def test_the_logs_crc32_is_zlibs(data, seed, skip):
    """Records are written and checked with ISA-L's CRC-32 (a dependency for
    its speed): it must be zlib's, which FORMAT.md names and earlier versions
    wrote with, for every length, seed and alignment."""
    from isal import isal_zlib

    assert record.crc32 is isal_zlib.crc32
    assert tail_module.crc32 is record.crc32
    view = memoryview(data)[skip:]
    assert record.crc32(view, seed) == zlib.crc32(view, seed)
    assert record.crc32(data) == zlib.crc32(data)
    length = len(data).to_bytes(4, "little")
    assert record.encode(data)[1] == zlib.crc32(data, zlib.crc32(length))
