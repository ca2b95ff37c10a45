"""Property tests (hypothesis): the record decoder, recovery of a damaged log,
and the front fed random lines.

Each test states a rule that must hold for every input and lets hypothesis
hunt for a counterexample: decode_at never vouches for bytes whose CRC does
not match, Log.open never hands back a corrupt or foreign entry, and the
front answers each request that has a msg_id exactly once, with JSON.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import sys
import tempfile
import time
import types
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from actors import messages as m
from actors.jsontext import MAX_DEPTH, Unreadable, overlong_envelope, parse_json, parse_nested
from actors.replies import APPEND_OK, ReplyFormatter
from tests.nodeproc import Node
from wal import CorruptionError, Entry, Log, crc_hex, record
from wal.errors import DataMissing
from wal.record import HEADER_SIZE, Damage, Decoded
from wal.segment import scan_bytes
from wal.statemachine import StateMachine

# Every example does real file or process I/O: no per-example deadline.
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- helpers -----------------------------------------------------------------


def encoded(payload: bytes) -> bytes:
    return record.encode(payload)[0]


def u32(buf: bytes, pos: int) -> int:
    return int.from_bytes(buf[pos : pos + 4], "little")


def valid_prefix(buf: bytes) -> tuple[int, int]:
    """(byte after the last good record, count of good records) decoding from 0.

    Written against FORMAT.md, not wal/, so the tests do not trust the code
    they check: a record is good when its header and payload fit and the CRC
    over length bytes + payload matches.
    """
    pos = count = 0
    while pos + HEADER_SIZE <= len(buf):
        end = pos + HEADER_SIZE + u32(buf, pos)
        if end > len(buf):
            break
        if zlib.crc32(buf[pos : pos + 4] + buf[pos + HEADER_SIZE : end]) != u32(buf, pos + 4):
            break
        pos, count = end, count + 1
    return pos, count


def write_log(directory: str, payloads: list[bytes], max_segment_bytes: int) -> list[str]:
    """Write `payloads` with the real Log; returns the segment paths, oldest first.

    The sealed segments' index files are removed: these properties are about
    the check of every record at start, which a valid index skips for a
    sealed segment (tests/test_segment_index.py holds what indexes do).
    """
    log, _ = Log.open(directory, max_segment_bytes=max_segment_bytes)
    try:
        for p in payloads:
            log.append(p)
        log.sync()
    finally:
        log.close()
    for name in os.listdir(directory):
        if name.endswith(".idx"):
            os.remove(os.path.join(directory, name))
    return [os.path.join(directory, n) for n in sorted(os.listdir(directory))]


def dir_bytes(directory: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def damage(data: st.DataObject, buf: bytes, max_ops: int = 3) -> bytes:
    """Apply 1..max_ops random hurts: bit flips, a cut, garbage or zeros appended."""
    out = bytearray(buf)
    for _ in range(data.draw(st.integers(1, max_ops), label="ops")):
        kind = data.draw(st.sampled_from(["flip", "truncate", "garbage", "zeros"]), label="kind")
        if kind == "flip" and out:
            pos = data.draw(st.integers(0, len(out) - 1), label="flip at")
            out[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif kind == "truncate":
            del out[data.draw(st.integers(0, len(out)), label="cut at") :]
        elif kind == "garbage":
            out += data.draw(st.binary(min_size=1, max_size=24), label="garbage")
        elif kind == "zeros":
            out += bytes(data.draw(st.integers(1, 40), label="zeros"))
    return bytes(out)


def read_back(log: Log) -> list[Entry]:
    """Every entry, once through read and once through scan; both must agree."""
    by_read = [log.read(o) for o in range(log.first_offset, log.next_offset)]
    by_scan = log.scan(log.first_offset, 1 << 30, 1 << 30) if by_read else []
    assert by_scan == by_read
    return by_read


def assert_entries_are_originals(log: Log, payloads: list[bytes]) -> None:
    assert log.first_offset == 0
    assert log.next_offset <= len(payloads), "more entries than were ever written"
    for e in read_back(log):
        assert e.payload == payloads[e.offset], f"offset {e.offset} is not what was written"
        assert e.checksum_valid
        assert e.crc == record.encode(payloads[e.offset])[1]


# -- 1. the record decoder ---------------------------------------------------

payloads_st = st.binary(max_size=48)


def payload_only_crc(payload: bytes) -> bytes:
    """A record whose CRC skips the length bytes: wrong by FORMAT.md."""
    return len(payload).to_bytes(4, "little") + zlib.crc32(payload).to_bytes(4, "little") + payload


# Buffers made of real records, near misses (CRC without the length, zero
# fill) and garbage, so decode_at meets good and bad records alike: random
# bytes alone would almost never hold a valid one.
buffers_st = st.lists(
    st.one_of(
        payloads_st.map(encoded),
        payloads_st.map(payload_only_crc),
        st.integers(1, 24).map(bytes),
        st.binary(max_size=12),
    ),
    max_size=8,
).map(b"".join)


@settings(FAST, max_examples=300)
@given(buffers_st)
def test_decode_at_is_total_and_only_vouches_for_matching_crcs(buf: bytes) -> None:
    for pos in range(len(buf) + HEADER_SIZE + 1):
        got = record.decode_at(buf, pos)
        assert record.decode_at(memoryview(buf), pos) == got  # scan_file passes an mmap view
        if pos + HEADER_SIZE > len(buf):
            assert got is Damage.INCOMPLETE_HEADER
            continue
        field, stored = u32(buf, pos), u32(buf, pos + 4)
        length = field & record.LENGTH_MASK  # bits 31, 30: a lost marker, an epoch-start record
        end = pos + HEADER_SIZE + length
        if end > len(buf):
            assert got is Damage.INCOMPLETE_PAYLOAD
            continue
        matches = zlib.crc32(buf[pos : pos + 4] + buf[pos + HEADER_SIZE : end]) == stored
        if not matches:
            assert got is Damage.BAD_CRC
            continue
        lost = bool(field & record.LOST_FLAG)
        epoch = record.epoch_of(field, buf[pos + HEADER_SIZE : end])
        assert got == Decoded(pos + HEADER_SIZE, length, stored, end, lost, epoch)


# payloads of few shapes, so keys repeat: sets and deletes of ASCII keys, keys
# whose invalid bytes decode alike (b"k\xff", b"k\xfe"), broken commands,
# and None for an entry that cannot be read
entry_st = st.one_of(
    st.none(),
    st.builds(
        lambda verb, key, sep, value: verb + key + sep + value,
        st.sampled_from([b"set ", b"del ", b"sat ", b"set", b""]),
        st.sampled_from([b"a", b"b", b"k\xff", b"k\xfe", b"\xc3\xa9", b"", b"a b", b"a=b"]),
        st.sampled_from([b"=", b"", b" "]),
        st.sampled_from([b"1", b"", b"x=y", b"\xff", b"v w"]),
    ),
)


@settings(FAST, max_examples=400)
@given(st.lists(entry_st, max_size=24), st.lists(st.integers(0, 24), max_size=4), st.booleans())
def test_apply_run_folds_a_run_as_apply_does_entry_by_entry(
    entries: list[bytes | None], cuts: list[int], damaged_before: bool
) -> None:
    """The compactor's replay (StateMachine.apply_run, bytes, gathered by key)
    leaves the state, the damaged offsets and the rewritten keys exactly as
    apply of each decoded payload in order, however the entries fall into runs."""
    start = ([7], frozenset({"a"})) if damaged_before else ((), frozenset())
    one, runs = (
        StateMachine({"a": "0", "z": "9"}, 5, *start),
        StateMachine({"a": "0", "z": "9"}, 5, *start),
    )
    for payload in entries:
        if payload is None:
            one.apply_damaged()
        else:
            one.apply(payload.decode("utf-8", "replace"))
    bounds = [0, *sorted(c for c in cuts if c <= len(entries)), len(entries)]
    for a, b in itertools.pairwise(bounds):
        runs.apply_run(entries[a:b])
    assert runs.state == one.state
    assert runs.applied_offset == one.applied_offset == 5 + len(entries)
    assert runs.damaged == one.damaged
    assert runs.rewritten == one.rewritten


@settings(FAST, max_examples=200)
@given(st.lists(payloads_st, max_size=6), st.binary(max_size=12), st.binary(max_size=12))
def test_encode_then_decode_gives_the_payload_back(
    payloads: list[bytes], before: bytes, after: bytes
) -> None:
    for p in payloads:
        data, crc = record.encode(p)
        assert len(data) == HEADER_SIZE + len(p) and data[HEADER_SIZE:] == p
        assert crc == zlib.crc32(len(p).to_bytes(4, "little") + p) == u32(data, 4)
        buf = before + data + after  # decoding must not depend on what surrounds it
        got = record.decode_at(buf, len(before))
        assert isinstance(got, Decoded)
        assert buf[got.payload_start : got.end] == p and got.crc == crc
    # a file of such records scans whole, every record at its place
    stream = b"".join(encoded(p) for p in payloads)
    scan = scan_bytes(stream)
    assert scan.damage is None and scan.valid_end == len(stream)
    assert (
        list(scan.positions)
        == list(itertools.accumulate((len(encoded(p)) for p in payloads), initial=0))[:-1]
    )


@settings(FAST, max_examples=300)
@given(payloads_st, st.data(), st.lists(payloads_st, max_size=2))
def test_one_bit_flip_never_decodes_to_another_payload(
    payload: bytes, data: st.DataObject, following: list[bytes]
) -> None:
    rec = bytearray(encoded(payload))
    bit = data.draw(st.integers(0, len(rec) * 8 - 1), label="bit")
    rec[bit // 8] ^= 1 << (bit % 8)
    # records after it give a flipped-up length real bytes to run into
    buf = bytes(rec) + b"".join(encoded(p) for p in following)
    got = record.decode_at(buf, 0)
    if bit >= 32:
        # same framing: CRC-32 catches every single-bit error in crc or payload
        assert got is Damage.BAD_CRC
    else:
        assert isinstance(got, Damage) or buf[got.payload_start : got.end] == payload


# -- 2. recovery of a damaged log -------------------------------------------

log_payloads_st = st.lists(st.binary(max_size=40), max_size=12)
segment_bytes_st = st.sampled_from([48, 80, 160, 1 << 20])  # several segments, or one


@settings(FAST, max_examples=150)
@given(log_payloads_st, segment_bytes_st, st.data())
def test_damaged_log_opens_to_a_clean_prefix_or_names_the_damage(
    payloads: list[bytes], max_segment_bytes: int, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as d:
        segs = write_log(d, payloads, max_segment_bytes)
        target = data.draw(st.integers(0, len(segs) - 1), label="damaged segment")
        with open(segs[target], "rb") as f:
            original = f.read()
        hurt = damage(data, original)
        with open(segs[target], "wb") as f:
            f.write(hurt)
        before = dir_bytes(d)
        last = target == len(segs) - 1
        base = int(os.path.basename(segs[target])[:20])
        try:
            log, report = Log.open(d, max_segment_bytes=max_segment_bytes)
        except CorruptionError as err:
            assert dir_bytes(d) == before, "a refused open must change nothing"
            check_corruption_names_the_damage(err, segs, target, hurt)
            return
        # every entry kept is the original at its offset, or reads back invalid
        # there (one rotted record costs one record); a sealed segment is
        # never cut, the last one only by a torn tail
        kept_end = os.path.getsize(segs[target])
        try:
            assert log.next_offset == len(payloads) or last
            for off in range(log.first_offset, log.next_offset):
                e = log.read(off)
                assert not e.checksum_valid or e.payload == payloads[off], off
            assert {d.offset for d in report.damaged} <= {
                o
                for o in range(log.first_offset, log.next_offset)
                if not log.read(o).checksum_valid
            }
            assert report.bytes_truncated == len(hurt) - kept_end
            # cutting never drops a record that is still intact after the damage
            for i, pos in enumerate(record_positions(payloads, segs, target)):
                rec = encoded(payloads[base + i])
                if pos >= kept_end and hurt[pos : pos + len(rec)] == rec:
                    pytest.fail(f"record {base + i} is intact at byte {pos} but was cut")
            expect_next = log.next_offset
        finally:
            log.close()
        # the cut is durable: a second open finds nothing to cut
        log2, report2 = Log.open(d, max_segment_bytes=max_segment_bytes)
        try:
            assert report2.bytes_truncated == 0 and log2.next_offset == expect_next
        finally:
            log2.close()


def record_positions(payloads: list[bytes], segs: list[str], target: int) -> list[int]:
    """Byte position of each original record of segment `target`."""
    base = int(os.path.basename(segs[target])[:20])
    end = int(os.path.basename(segs[target + 1])[:20]) if target + 1 < len(segs) else len(payloads)
    return list(itertools.accumulate((len(encoded(p)) for p in payloads[base:end]), initial=0))[:-1]


def check_corruption_names_the_damage(
    err: CorruptionError, segs: list[str], target: int, hurt: bytes
) -> None:
    where = err.path if err.position is None else f"{err.path} at byte {err.position}"
    assert where in str(err)
    assert "walctl" in str(err) or "restore" in str(err)  # names the way out
    good_end, _ = valid_prefix(hurt)
    if good_end < len(hurt) and err.path == segs[target]:
        # the damaged file itself, at or after the byte where its first bad
        # record starts (rotted records before the refused damage are kept)
        assert err.position >= good_end, (err, good_end)
    else:
        # the damaged file still decodes, its rotted records kept (cut or
        # grown at a record boundary): the segment after it no longer chains
        assert target + 1 < len(segs)
        assert err.path == segs[target + 1] and err.position in (0, None), err
        if isinstance(err, DataMissing):
            assert os.path.basename(segs[target]) in str(err)  # named as maybe cut short


@settings(FAST, max_examples=150)
@given(log_payloads_st, segment_bytes_st, st.data())
def test_torn_tail_keeps_exactly_the_records_before_the_cut(
    payloads: list[bytes], max_segment_bytes: int, data: st.DataObject
) -> None:
    """The newest segment cut at any byte, then maybe zeros after it (a file
    extended, never written: what preallocation leaves). What follows the last
    whole record is a torn tail, cut and reported, exactly when it holds a
    byte that is not zero; a tail of zeros is the end of the data, kept."""
    with tempfile.TemporaryDirectory() as d:
        segs = write_log(d, payloads, max_segment_bytes)
        base = int(os.path.basename(segs[-1])[:20])
        starts = record_positions(payloads, segs, len(segs) - 1)
        ends = [s + len(encoded(payloads[base + i])) for i, s in enumerate(starts)]
        zeros = data.draw(st.sampled_from([0, 0, 1, 7, 8, 9, 40]), label="zeros after")
        if zeros:
            cut = data.draw(st.sampled_from([0, *ends]), label="cut at record end")
        else:
            cut = data.draw(st.integers(0, os.path.getsize(segs[-1])), label="cut at")
        os.truncate(segs[-1], cut)
        with open(segs[-1], "ab") as f:
            f.write(bytes(zeros))
        with open(segs[-1], "rb") as f:
            before = f.read()
        log, report = Log.open(d, max_segment_bytes=max_segment_bytes)  # never CorruptionError
        try:
            whole = [e for e in ends if e <= cut]
            assert log.next_offset == base + len(whole)
            kept_end = whole[-1] if whole else 0
            torn = any(before[kept_end:])
            assert report.bytes_truncated == (len(before) - kept_end if torn else 0)
            assert os.path.getsize(segs[-1]) == (kept_end if torn else len(before))
            assert_entries_are_originals(log, payloads)
        finally:
            log.close()


@settings(
    FAST,
    max_examples=100,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(st.lists(st.binary(min_size=4, max_size=30), min_size=3, max_size=12), st.data())
def test_damage_in_a_sealed_segment_is_corruption_or_costs_its_records_only(
    payloads: list[bytes], data: st.DataObject
) -> None:
    """A sealed segment is never cut: its damage is refused (naming it), or
    each damaged record is kept at its offset, read back invalid."""
    with tempfile.TemporaryDirectory() as d:
        segs = write_log(d, payloads, 48)
        assume(len(segs) >= 2)
        target = data.draw(st.integers(0, len(segs) - 2), label="sealed segment")
        with open(segs[target], "rb") as f:
            original = f.read()
        hurt = damage(data, original)
        assume(hurt != original)
        with open(segs[target], "wb") as f:
            f.write(hurt)
        before = dir_bytes(d)
        try:
            log, report = Log.open(d, max_segment_bytes=48)
        except CorruptionError as err:
            assert dir_bytes(d) == before
            check_corruption_names_the_damage(err, segs, target, hurt)
            return
        try:
            assert len(hurt) == len(original) and report.damaged  # rot in place, reported
            assert log.next_offset == len(payloads) and report.bytes_truncated == 0
            for e in read_back(log):
                assert not e.checksum_valid or e.payload == payloads[e.offset]
        finally:
            log.close()


def record_shaped_payload() -> st.SearchStrategy[tuple[bytes, int]]:
    """(payload, end of the inner record): ASCII text, so a wal_append could
    send it, that holds a whole encoded record followed by more text."""

    def build(parts: tuple[bytes, bytes, bytes]) -> tuple[bytes, int] | None:
        inner, pre, post = parts
        rec = encoded(inner)
        return (pre + rec + post, len(pre) + len(rec)) if all(b < 0x80 for b in rec) else None

    ascii_ = st.binary(max_size=6).map(lambda b: bytes(x & 0x7F for x in b))
    return (
        st.tuples(ascii_, ascii_, ascii_.map(lambda b: b + b"."))
        .map(build)
        .filter(lambda got: got is not None)
    )


@settings(FAST, max_examples=20, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=8), record_shaped_payload(), st.data())
def test_torn_append_of_a_record_shaped_payload_is_refused_not_cut(
    first: bytes, shaped: tuple[bytes, int], data: st.DataObject
) -> None:
    payload, inner_end = shaped
    with tempfile.TemporaryDirectory() as d:
        (seg,) = write_log(d, [first, payload], 1 << 20)
        start = HEADER_SIZE + len(first)  # where the torn (second) record starts
        # the write stopped after the inner record, before the payload's end
        lo = start + HEADER_SIZE + inner_end
        cut = data.draw(st.integers(lo, start + HEADER_SIZE + len(payload) - 1), label="cut at")
        os.truncate(seg, cut)
        # Indistinguishable from a flipped length field followed by real
        # records (docs/FORMAT.md, "Two limits"): the safe side is to refuse,
        # naming the torn record's first byte, and to leave the file alone.
        with pytest.raises(CorruptionError) as err:
            Log.open(d)
        assert err.value.position == start and os.path.getsize(seg) == cut


# -- 3. the front, fed random lines -----------------------------------------


def strict_json(text: str | bytes) -> Any:
    """json.loads without NaN/Infinity, which are not JSON (RFC 8259); with
    integers of any length (as ("int", digits)) and room for deep nesting,
    which are JSON: a reply may echo them."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def integer(digits: str) -> Any:
        return int(digits) if len(digits) <= 4000 else ("int", digits)

    with room_for_odd_depth():
        return json.loads(text, parse_constant=refuse, parse_int=integer)


@contextlib.contextmanager
def room_for_odd_depth() -> Iterator[None]:
    """Recursion room for json to read and write what odd_value nests."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 4 * MAX_ODD_DEPTH)  # '{"a": [' is two levels
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def expected_reply_key(line: bytes) -> str | None:
    """What PROTOCOL.md promises for `line`: a reply key, or None for no reply.

    No reply for a line that is not JSON, or has no body.type; for a body
    with msg_id absent or null. Any other msg_id gets exactly one reply,
    echoed in in_reply_to (a non-integer one gets error 12), whatever the
    line nests or holds (numbers past a double, integers of any length).
    """
    try:
        msg = strict_json(line)
    except ValueError:
        return None
    body = msg.get("body") if isinstance(msg, dict) else None
    if not isinstance(body, dict) or "type" not in body:
        return None
    return None if body.get("msg_id") is None else reply_key(body["msg_id"])


def reply_key(msg_id: Any) -> str:
    with room_for_odd_depth():
        return json.dumps(msg_id, sort_keys=True)


TYPES = [  # wal_append first: hypothesis leans towards the first choice
    "wal_append",
    "wal_read",
    "wal_scan",
    "wal_info",
    "wal_sync",
    "wal_segment_config",
    "wal_segment_info",
    "wal_snapshot",
    "wal_compact",
    "wal_recover",
    "kv_get",
    "fsync_benchmark",
    "status",
    "init",
]

# Lone surrogates are legal in JSON text ("\ud800") and Python keeps them.
any_text = st.text(
    st.one_of(st.characters(exclude_categories=()), st.sampled_from("\ud800\udfff\x00é€")),
    max_size=12,
)
# Strings the front forwards to another process over msgpack; lone
# surrogates must get error 12 there, not crash it.
forwarded_text = any_text
small_int = st.integers(-3, 40)
# Top-level ints the front forwards (offsets, sizes), including ones too
# big for msgpack (error 12, not a crash).
forwarded_int = st.one_of(
    small_int,
    st.integers(-(2**80), 2**80),
    st.sampled_from([2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**64)]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    small_int,
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
)
# Nested values are never forwarded as such (a list is not an offset).
wild = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=6,
)
wild_forwarded_int = st.one_of(
    forwarded_int, wild.filter(lambda v: not (isinstance(v, int) and v >= 2**64))
)
wild_forwarded_text = st.one_of(
    forwarded_text,
    wild.filter(lambda v: not (isinstance(v, str) and any("\ud800" <= c <= "\udfff" for c in v))),
)
# JSON json.dumps cannot write: numbers past a double, integers past
# Python's 4300 digits, nesting past the front's MAX_DEPTH (and past json's
# recursion limit). Put in a line's text where ODD_MARK stands.
MAX_ODD_DEPTH = 1500
ODD_MARK = "\x00odd value\x00"
odd_value = st.one_of(
    st.sampled_from(["1e400", "-1e999", "1E+400", "9" * 4301, "-" + "3" * 5000]),
    st.integers(MAX_DEPTH - 1, MAX_ODD_DEPTH).map(lambda d: "[" * d + "]" * d),
    st.integers(MAX_DEPTH - 1, MAX_ODD_DEPTH).map(lambda d: '{"a": [' * d + "1e400" + "]}" * d),
)
payload_text = st.one_of(
    st.text(max_size=24),
    st.builds("set {}={}".format, st.text("abcxyz", max_size=3), st.text(max_size=6)),
    st.builds("del {}".format, st.text("abcxyz", max_size=3)),
    any_text,
)

# Per type, the fields and what to put in them: plausible values and wrong
# ones. None as a field strategy value means the field may also be absent.
FIELDS: dict[str, dict[str, st.SearchStrategy]] = {
    "init": {
        "node_id": st.one_of(st.just("n1"), forwarded_text, wild_forwarded_text),
        "node_ids": st.one_of(st.just(["n1"]), st.lists(any_text, max_size=3), wild),
    },
    "wal_append": {"payload": st.one_of(payload_text, wild)},
    "wal_read": {"offset": wild_forwarded_int},
    "wal_scan": {"from_offset": wild_forwarded_int, "max_entries": wild_forwarded_int},
    "wal_segment_config": {
        "max_segment_bytes": st.one_of(st.integers(60, 70), st.just(1 << 20), wild_forwarded_int)
    },
    "wal_compact": {"snapshot_at_offset": wild_forwarded_int},
    "wal_recover": {
        "wal_entries": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "offset": wild,
                        "payload": st.one_of(payload_text, wild),
                        "checksum": st.one_of(st.sampled_from(["valid", "invalid"]), wild),
                    },
                ),
                max_size=4,
            ),
            wild,
        )
    },
    "kv_get": {"key": st.one_of(st.text("abcxyz", max_size=3), wild_forwarded_text)},
    "fsync_benchmark": {
        # always present: absent means 1000 entries, seconds of fsyncs
        "entries": st.one_of(
            st.integers(1, 3),
            st.integers(20_001, 2**64 - 1),
            st.integers(-(2**70), 0),
            wild.filter(lambda v: not isinstance(v, int) or v <= 3 or v > 20_000),
        ),
        "strategies": st.one_of(
            st.lists(st.sampled_from(["always", "batch_10ms", "none"]), min_size=1, max_size=3),
            st.lists(any_text, max_size=2),
            wild,
        ),
    },
}
REQUIRED = {"fsync_benchmark": {"entries"}}


@st.composite
def request_body(draw: st.DrawFn) -> dict:
    # mostly real types, so most requests get past the type check
    known = draw(st.integers(0, 7), label="known type") > 0
    typ = draw(st.sampled_from(TYPES) if known else any_text, label="type")
    body: dict[str, Any] = {"type": typ}
    for name, values in FIELDS.get(typ, {}).items():
        if name in REQUIRED.get(typ, ()) or draw(st.booleans()):
            body[name] = draw(values, label=name)
    if draw(st.integers(0, 9)) == 0:
        body.update(draw(st.dictionaries(any_text, wild, max_size=2), label="extra fields"))
    return body


# Half plain ints, so most requests reach the writer and compactor; then
# every other shape a JSON msg_id can take.
MSG_ID_KINDS = ["int"] * 9 + [
    "huge", "negative", "float", "str", "bool", "list", "object", "null", "absent"
]  # fmt: skip


def msg_id_for(kind: str, n: int) -> Any:
    """A msg_id of the given shape, unique by n (only bools can repeat)."""
    return {
        "int": n,
        "huge": 2**70 + n,  # an integer, only bigger than any machine word
        "negative": -n,
        "float": n + 0.5,
        "str": f"id-{n}",
        "bool": n % 2 == 0,
        "list": [n],
        "object": {"n": n},
        "null": None,
    }[kind]


@st.composite
def front_line(draw: st.DrawFn, n: int) -> bytes:
    """One stdin line, without its newline; `n` makes its msg_id unique."""
    kind = draw(
        st.sampled_from(
            ["request"] * 8 + ["text", "bytes", "json", "no body", "bad body", "blank"]
        ),
        label="line kind",
    )
    if kind == "text":
        return draw(st.text(max_size=40)).replace("\n", " ").encode()
    if kind == "bytes":
        return draw(st.binary(max_size=40)).replace(b"\n", b" ")
    if kind == "blank":
        return draw(st.sampled_from([b"", b" ", b"\t", b"\r"]))
    if kind == "json":
        obj: Any = draw(wild)  # any JSON value; rarely an object with a body
    elif kind == "no body":
        obj = {"src": "c1", "dest": "n1", **draw(st.dictionaries(any_text, wild, max_size=2))}
        obj.pop("body", None)
    else:
        body: Any = draw(request_body()) if kind == "request" else draw(wild)
        if kind == "bad body" and isinstance(body, dict):
            body.pop("type", None)
            body["msg_id"] = n  # a msg_id without a type: still no reply; a non-string one: 10
            if draw(st.booleans()):
                body["type"] = draw(st.one_of(st.none(), small_int, st.lists(any_text, max_size=1)))
        if kind == "request":
            id_kind = draw(st.sampled_from(MSG_ID_KINDS), label="msg_id kind")
            if id_kind != "absent":
                body["msg_id"] = msg_id_for(id_kind, n)
        obj = {"src": draw(st.one_of(st.just("c1"), wild)), "dest": "n1", "body": body}
        if draw(st.integers(0, 9)) == 0:
            del obj[draw(st.sampled_from(["src", "dest"]))]
        odd = draw(
            st.sampled_from([None] * 6 + ["msg_id", "type", "field", "src", "two"]), label="odd"
        )
        if odd == "src":
            obj["src"] = ODD_MARK
        elif odd == "two" and isinstance(body, dict):  # say, digits first, then nesting
            body["extra"] = body["extra2"] = ODD_MARK
        elif odd is not None and isinstance(body, dict):
            body[{"field": "extra"}.get(odd, odd)] = ODD_MARK
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()), allow_nan=False)
    parts = text.split(json.dumps(ODD_MARK))  # each place gets a value of its own
    text = parts[0] + "".join(draw(odd_value, label="odd value") + part for part in parts[1:])
    # unescaped, a lone surrogate goes out as surrogatepass bytes, which
    # json.loads(bytes) takes back in (expected_reply_key uses it too)
    return text.encode("utf-8", "surrogatepass")


class Replies:
    """Reads the node's stdout line by line and checks each line as it comes."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.next_msg_id = 1  # init_ok was 0; +1 per line sent, never repeating

    def next(self, timeout: float) -> dict:
        try:
            line = self.node.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no reply within {timeout} s; stderr:\n{self.node.stderr_text()[-4000:]}"
            ) from None
        assert line is not None, (
            f"walnode closed stdout; stderr:\n{self.node.stderr_text()[-4000:]}"
        )
        msg = strict_json(line)
        assert isinstance(msg, dict) and list(msg) == ["src", "dest", "body"], line
        body = msg["body"]
        assert isinstance(body, dict) and isinstance(body.get("type"), str), line
        assert list(body)[:2] == ["type", "in_reply_to"] and list(body)[-1] == "msg_id", line
        assert body["msg_id"] == self.next_msg_id, f"reply counter skipped or repeated: {line}"
        self.next_msg_id += 1
        return msg

    def collect(self, expected: Counter[str], timeout: float = 12) -> None:
        """Read until every expected reply came; any other reply is a failure."""
        got: Counter[str] = Counter()
        deadline = time.monotonic() + timeout
        while got != expected:
            msg = self.next(max(0.01, deadline - time.monotonic()))
            key = reply_key(msg["body"]["in_reply_to"])
            got[key] += 1
            assert got[key] <= expected[key], f"unexpected or duplicate reply: {msg}"

    def call(self, body: dict, msg_id: int) -> dict:
        self.node.send({**body, "msg_id": msg_id})
        msg = self.next(12)  # the front itself answers error 0 after 10 s
        assert msg["body"]["in_reply_to"] == msg_id, f"unexpected reply: {msg}"
        return msg["body"]


def check_alive(replies: Replies, node: Node, payload: str, msg_id: int) -> None:
    """A plain append is answered right, and reads back."""
    assert node.proc.poll() is None, f"walnode exited; stderr:\n{node.stderr_text()[-4000:]}"
    ok = replies.call({"type": "wal_append", "payload": payload}, msg_id)
    assert ok["type"] == "wal_append_ok", ok
    assert ok["length"] == len(payload.encode())
    assert ok["checksum"] == crc_hex(record.encode(payload.encode())[1])
    got = replies.call({"type": "wal_read", "offset": ok["offset"]}, msg_id + 1)
    assert got == {
        "type": "wal_read_ok",
        "in_reply_to": msg_id + 1,
        "offset": ok["offset"],
        "payload": payload,
        "checksum_valid": True,
        "msg_id": got["msg_id"],
    }


# 100 examples, each a round trip through the real node: 15-50 s on the
# loaded box, once 85 s; the limit only matters if a reply never comes.
@pytest.mark.timeout(180)
def test_front_answers_each_msg_id_exactly_once_with_json(
    node_factory: Callable[..., Node],
) -> None:
    node = node_factory()
    assert node.init()["msg_id"] == 0
    replies = Replies(node)
    examples = itertools.count(1)

    # One node serves every example, so an example that fails leaves it in
    # an unknown state (late replies, or dead): shrinking on it would chase
    # ghosts and, with a reply missing, wait out its timeout each try. So no
    # shrinking, and after the first failure every call re-raises it at once;
    # hypothesis prints the failing example's lines as drawn.
    failed: list[BaseException] = []

    @settings(
        max_examples=100,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.data())
    def batch(data: st.DataObject) -> None:
        base = next(examples) * 1_000_000  # this example's msg_ids: base..base+999_999
        size = data.draw(st.integers(0, 16), label="lines")
        lines = [data.draw(front_line(base + i), label=f"line {i}") for i in range(size)]
        if failed:  # after the draws: hypothesis replays a failure draw for draw
            raise failed[0]
        expected = Counter(k for line in lines if (k := expected_reply_key(line)) is not None)
        try:
            node.send_raw(b"".join(line + b"\n" for line in lines))
            replies.collect(expected)
            check_alive(replies, node, f"alive {base}", base + 999_998)
        except BaseException as err:
            failed.append(err)
            raise

    batch()
    assert node.close() == 0  # EOF: answers everything, exits cleanly
    assert node.lines.get(timeout=5) is None, "output after every reply was read"


# -- the front's known crashes (see the report) --------------------------------


def one_bad_line_then_alive(node_factory: Callable[..., Node], line: bytes) -> None:
    """A fresh node gets `line`: the promised reply (if any) comes, then the node
    still appends and reads."""
    node = node_factory()
    node.init()
    replies = Replies(node)
    key = expected_reply_key(line)
    node.send_raw(line + b"\n")
    replies.collect(Counter([key] if key else []), timeout=5)
    check_alive(replies, node, "alive", 10**9)


@pytest.mark.timeout(30)
def test_front_survives_integers_too_big_for_msgpack(node_factory: Callable[..., Node]) -> None:
    @settings(FAST, max_examples=5, phases=[Phase.generate])
    @given(
        st.sampled_from(
            [
                ("wal_read", "offset"),
                ("wal_scan", "from_offset"),
                ("wal_segment_config", "max_segment_bytes"),
                ("wal_compact", "snapshot_at_offset"),
            ]
        ),
        st.integers(2**64, 2**200),
    )
    def run(field: tuple[str, str], value: int) -> None:
        typ, name = field
        body = {"type": typ, "msg_id": 7, name: value}
        one_bad_line_then_alive(
            node_factory, json.dumps({"src": "c1", "dest": "n1", "body": body}).encode()
        )

    run()


@pytest.mark.timeout(30)
def test_front_survives_lone_surrogates_in_forwarded_strings(
    node_factory: Callable[..., Node],
) -> None:
    @settings(FAST, max_examples=5, phases=[Phase.generate])
    @given(
        st.sampled_from([("kv_get", "key"), ("init", "node_id")]),
        st.text(max_size=3),
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()),
    )
    def run(field: tuple[str, str], text: str, surrogate: str) -> None:
        typ, name = field
        body = {"type": typ, "msg_id": 7, name: text + surrogate}
        one_bad_line_then_alive(
            node_factory, json.dumps({"src": "c1", "dest": "n1", "body": body}).encode()
        )

    run()


@pytest.mark.timeout(30)
def test_front_never_prints_nan_or_infinity(node_factory: Callable[..., Node]) -> None:
    @settings(FAST, max_examples=5, phases=[Phase.generate])
    @given(st.sampled_from(["NaN", "Infinity", "-Infinity"]), st.sampled_from(["msg_id", "src"]))
    def run(constant: str, where: str) -> None:
        if where == "msg_id":
            line = '{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": %s}}'
        else:
            line = '{"src": %s, "dest": "n1", "body": {"type": "wal_info", "msg_id": 7}}'
        # Skipping the line (it is not JSON) or answering in JSON are both
        # fine; printing NaN is not. Replies.next parses strictly.
        node = node_factory()
        node.init()
        replies = Replies(node)
        node.send_raw((line % constant).encode() + b"\n")
        node.send({"type": "wal_append", "payload": "alive", "msg_id": 10**9})
        others = 0
        while replies.next(5)["body"]["in_reply_to"] != 10**9:
            others += 1
        assert others <= 1

    run()


# -- 4. the front's fast paths agree with json ---------------------------------

json_docs = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        any_text,
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(FAST, max_examples=400)
@given(json_docs, st.booleans())
def test_parse_json_reads_what_json_reads(doc: Any, ascii_only: bool) -> None:
    line = json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    expected = json.loads(line)
    got = parse_json(line)
    assert got == expected and json.dumps(got) == json.dumps(expected)


def test_parse_json_refuses_what_is_not_json() -> None:
    for line in [b"NaN", b'{"a": Infinity}', b"-Infinity", b"{", b"[1,]", b'{"a" 1}', b"01"]:
        with pytest.raises(ValueError):
            parse_json(line)
    assert parse_json(b"123456789012345678901234567") == 123456789012345678901234567


def test_parse_json_keeps_what_it_cannot_hold_as_text() -> None:
    """Numbers past a double or past 4300 digits, and nesting past MAX_DEPTH,
    become Unreadable, holding their exact text (a reply echoes it)."""
    for number in ["1e400", "-1e999", "9" * 4301]:
        got = parse_json(f'{{"msg_id": {number}}}'.encode())["msg_id"]
        assert isinstance(got, Unreadable) and got.text == number
    deep = "[" * (MAX_DEPTH + 900) + "]" * (MAX_DEPTH + 900)  # past json's recursion too
    got = parse_json(f'{{"a": {deep}}}'.encode())["a"]
    for _ in range(MAX_DEPTH - 2):  # "a" is at depth 2; MAX_DEPTH + 1 is kept as text
        (got,) = got
    (unreadable,) = got
    assert unreadable == Unreadable(deep[MAX_DEPTH - 1 : -(MAX_DEPTH - 1)], unreadable.why)


# Mutations that make JSON text invalid, or valid in another way.
json_noise = st.sampled_from(list('[]{},:"\\ 0-1e.tfn') + ["true", "null", "1e400", "\\u"])


@settings(FAST, max_examples=500)
@given(json_docs, st.booleans(), st.data())
def test_parse_nested_reads_what_json_reads(doc: Any, ascii_only: bool, data: Any) -> None:
    """The front's loop parser for deep lines accepts exactly json's language,
    and reads the same values (checked with and without random damage)."""
    text = json.dumps(doc, ensure_ascii=ascii_only)
    if data.draw(st.booleans(), label="damage"):
        at = data.draw(st.integers(0, len(text)), label="at")
        cut = data.draw(st.integers(0, 2), label="cut")
        text = text[:at] + data.draw(json_noise, label="insert") + text[at + cut :]
    try:
        expected = strict_json(text)
    except ValueError:
        with pytest.raises(ValueError):
            parse_nested(text)
        return
    got = parse_nested(text)
    # json reads a number past a float's range (1e400, or 1309 damaged to 1e309)
    # as inf, where the front keeps the text; a string "Infinity" is skipped too
    if "Infinity" in json.dumps(expected):
        return
    assert got == expected and json.dumps(got) == json.dumps(expected)


# keys that look like the envelope's, anywhere in a random request
envelope_keys = st.one_of(
    st.sampled_from(["src", "dest", "body", "msg_id", "meta", "payload", 'a"msg_id', "msg_id\\"]),
    any_text,
)
envelope_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(-1e9, 1e9), any_text
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(envelope_keys, inner, max_size=3)
    ),
    max_leaves=12,
)


def shuffled(data: Any, mapping: dict) -> dict:
    return dict(data.draw(st.permutations(list(mapping.items())), label="order"))


@settings(FAST, max_examples=400)
@given(
    st.dictionaries(envelope_keys, envelope_values, max_size=4),
    st.dictionaries(envelope_keys, envelope_values, max_size=4),
    st.fixed_dictionaries(
        {},
        optional={
            "src": st.one_of(any_text, envelope_values),
            "dest": st.one_of(any_text, envelope_values),
            "msg_id": st.one_of(st.integers(-(2**64), 2**64), envelope_values),
        },
    ),
    st.sampled_from([{}, {"separators": (",", ":")}, {"indent": 1}, {"ensure_ascii": False}]),
    st.data(),
)
def test_overlong_envelope_reads_what_json_reads_or_nothing(
    top: dict, body: dict, fields: dict, layout: dict, data: Any
) -> None:
    """The envelope of an over-long line, from its head: the whole line gives
    exactly json's top-level src/dest and body msg_id (strings and an integer,
    else None); any cut of it gives each of those or None, never another."""
    body = shuffled(data, {**body, **({"msg_id": fields["msg_id"]} if "msg_id" in fields else {})})
    envelope = {**top, **{k: v for k, v in fields.items() if k != "msg_id"}}
    if data.draw(st.booleans(), label="has body"):
        envelope["body"] = body
    envelope = shuffled(data, envelope)
    try:
        line = json.dumps(envelope, **layout).encode()
    except UnicodeEncodeError:  # a lone surrogate travels only as an escape
        line = json.dumps(envelope).encode()
    msg = json.loads(line)
    src, dest, in_body = msg.get("src"), msg.get("dest"), msg.get("body")
    msg_id = in_body.get("msg_id") if isinstance(in_body, dict) else None
    expected = (
        src if isinstance(src, str) else None,
        dest if isinstance(dest, str) else None,
        msg_id if type(msg_id) is int else None,
    )
    assert overlong_envelope(line) == expected
    cut = data.draw(st.integers(0, len(line)), label="cut")
    for got, want in zip(overlong_envelope(line[:cut]), expected, strict=True):
        assert got is None or got == want, (line[:cut], got, want)


@settings(FAST, max_examples=300)
@given(
    any_text,
    any_text,
    st.integers(0, 2**63),
    st.integers(0, 2**63),
    st.integers(0, 2**20),
    st.integers(0, 2**32 - 1),
)
def test_fast_append_reply_is_json_dumps_layout(
    src: str, dest: str, in_reply_to: int, offset: int, length: int, crc: int
) -> None:
    """The writer's [offset, length, crc] printed by the front's fast path
    is json.dumps of the protocol's reply, the checksum as 8 hex digits."""
    fields = m.append_fields(m.append_ok_fields(offset, length, crc))
    assert fields["checksum"] == f"{crc:08x}" and len(fields["checksum"]) == 8
    body = {"type": APPEND_OK, "in_reply_to": in_reply_to, **fields, "msg_id": 7}
    expected = json.dumps({"src": src, "dest": dest, "body": body})
    formatter = ReplyFormatter()
    request = types.SimpleNamespace(src=src, dest=dest, msg_id=in_reply_to, length=length)
    # twice: the second line comes from the remembered template
    got = formatter.append_ok_lines([request, request], [offset, offset], [crc, crc], 7)
    second = expected.replace('"msg_id": 7}}', '"msg_id": 8}}')
    assert got == f"{expected}\n{second}\n".encode()
