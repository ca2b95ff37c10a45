"""The fixed differential sessions: every request shape of lines.py, alone
(a step each) and in bulk (thousands of lines in one write, the runs a
front's fast path parses), at the size limits, cut across writes, and across
restarts. Their replies from main are stored in tests/differential_corpus.json.gz
(scripts/differential_corpus.py writes it); tests/test_differential.py checks
a checkout against it."""

from __future__ import annotations

import json
import random

from walctl.differential import lines as L
from walctl.differential.session import Restart, Session, Step


class SessionBuilder:
    """Steps of a session, each request with a fresh msg_id (1, 2, ...)."""

    def __init__(self, name: str, flags: tuple[str, ...] = ()) -> None:
        self.name = name
        self.flags = flags
        self.steps: list[Step | Restart] = []
        self.next_id = 1

    def line(self, template: bytes) -> bytes:
        self.next_id += 1
        return L.fill(template, self.next_id - 1)

    def append(self, payload: str) -> bytes:
        return self.line(L.APPEND % json.dumps(payload).encode())

    def body(self, fields: str) -> bytes:
        return self.line(L.BODY % fields.encode())

    def step(self, *lines: bytes, pause: float = 0.0) -> None:
        """All `lines` in one write."""
        self.steps.append(Step((b"".join(lines),), pause))

    def writes(self, *chunks: bytes, pause: float = 0.0) -> None:
        """Several writes, `pause` seconds apart, then the barrier."""
        self.steps.append(Step(tuple(chunks), pause))

    def each(self, templates: list[bytes]) -> None:
        """One step per template: each line answered before the next is read."""
        for template in templates:
            self.step(self.line(template))

    def restart(self) -> None:
        self.steps.append(Restart())

    def init(self, node_id: str = "n1") -> None:
        self.step(self.line(L.init_lines(node_id)[-1]))

    def build(self) -> Session:
        return Session(self.name, self.flags, tuple(self.steps))


def before_and_at_init() -> Session:
    b = SessionBuilder("before_and_at_init")
    b.each(L.before_init())
    b.each(L.init_lines()[:-1])  # refused inits: the node stays uninitialised
    b.step(*(b.line(t) for t in L.before_init()))  # the same in one write
    # init in the middle of a write: the lines after it wait for its answer
    b.step(*(b.line(t) for t in [*L.before_init()[:3], L.init_lines()[-1], *L.before_init()]))
    b.each(L.init_lines())  # again: refused shapes, then the same id: init_ok
    # a recorded id: taken, and the replies' src becomes n2
    b.step(b.body('"type": "init", "node_id": "n2"'), b.append("as n2"))
    b.step(b.body('"type": "init", "node_id": "n3"'), b.append("n3 refused"))
    b.step(b.body('"type": "init", "node_id": "n1", "node_ids": ["n1", "n4"]'))
    b.step(b.line(L.ODD_BUT_VALID[0]), b.body('"type": "init", "node_id": "n4"'))
    b.step(b.body('"type": "wal_scan", "from_offset": 0'))
    return b.build()


def each_shape_alone() -> Session:
    b = SessionBuilder("each_shape_alone")
    b.init()
    b.each([L.APPEND % p for p in L.PAYLOAD_TEXTS])
    b.each(L.NOT_REQUESTS)
    b.each(L.FRONT_ANSWERED)
    b.each(L.ODD_BUT_VALID)
    b.each(L.LOCKSTEP_ONLY)
    b.step(b.body('"type": "fsync_benchmark", "entries": 1, "strategies": ["none"]'))
    b.step(b.body('"type": "wal_scan", "from_offset": 0, "max_entries": 10000'))
    return b.build()


def shapes_in_bulk() -> Session:
    """Every shape shuffled among 3000 plain appends, in one write, three times
    over (spaced, compact and CRLF layouts of the plain appends)."""
    b = SessionBuilder("shapes_in_bulk")
    b.init()
    rng = random.Random(15)
    b.step(*(b.append(f"set k{i}=v{i}") for i in range(20)))
    shapes = [
        *(L.APPEND % p for p in L.PAYLOAD_TEXTS),
        *L.NOT_REQUESTS,
        *L.FRONT_ANSWERED,
        *L.ODD_BUT_VALID,
    ]
    for layout in range(3):
        kv = [b.line(t) for t in L.KV_GETS]  # first in the write: no append in flight
        kv.append(b.body('"type": "kv_get", "key": "k3"'))
        mixed = [b.line(t) for t in shapes]
        for i in range(3000):
            body = {"type": "wal_append", "msg_id": b.next_id, "payload": f"set b{i % 50}={i}"}
            b.next_id += 1
            if layout == 0:
                mixed.append(L.envelope(body))
            elif layout == 1:
                mixed.append(L.compact(body))
            else:
                mixed.append(L.envelope(body)[:-1] + b"\r\n")
        rng.shuffle(mixed)
        b.step(*kv, *mixed)
    b.step(b.body('"type": "wal_info"'), b.body('"type": "wal_segment_info"'))
    b.step(b.body('"type": "kv_get", "key": "b7"'), b.body('"type": "kv_get", "key": "x"'))
    b.step(
        *(
            b.body(f'"type": "wal_scan", "from_offset": {n}, "max_entries": 40')
            for n in range(0, 9500, 900)
        )
    )
    return b.build()


def _overlong(msg_id_part: bytes, size: int, tail: bytes = b"") -> bytes:
    """A request line of `size` bytes (newline not counted)."""
    head = b'{"src": "c1", "dest": "n1", "body": {%s"type": "wal_append", "payload": "' % (
        msg_id_part
    )
    end = b'"%s}}' % tail
    return head + b"p" * (size - len(head) - len(end)) + end + b"\n"


def limits() -> Session:
    """--max-payload-bytes 64 and --max-line-bytes 4096: payloads at and one
    past the limit, lines at and one past theirs, over-long lines of every
    envelope, cut across writes."""
    b = SessionBuilder("limits", ("--max-payload-bytes=64", "--max-line-bytes=4096"))
    b.init()
    limit_lines = list(L.payload_limit_lines(64))
    b.each(limit_lines)
    b.step(*(b.line(t) for t in limit_lines))
    overlong = []
    for size in (4094, 4095, 4096, 4097, 4098, 5000, 10000, 70000):
        overlong.append(_overlong(b'"msg_id": %d, ' % b.next_id, size))
        b.next_id += 1
    overlong += [
        _overlong(b"", 5000),  # no msg_id: skipped
        _overlong(b"", 5000, b', "msg_id": 7'),  # msg_id past the first 4 KiB
        _overlong(b'"x": {"msg_id": 8}, ', 5000),  # nested: not the body's
        _overlong(b'"x": "\\"msg_id\\": 9", ', 5000),  # inside a string
        _overlong(b'"msg_id": 1.5, ', 5000),
        _overlong(b'"msg_id": true, ', 5000),
        _overlong(b'"msg_id": "10", ', 5000),
        _overlong(b'"msg_id": -0, ', 5000),
        _overlong(b'"msg_id": 18446744073709551616, ', 5000),
        _overlong(b'"msg_id": 11, "msg_id": 12, ', 5000),
        b'{"body": {"msg_id": 13, "type": "wal_info"}, "pad": "' + b"q" * 5000 + b'"}\n',
        b'{"src": "' + b"s" * 4200 + b'", "body": {"msg_id": 14, "type": "wal_info"}}\n',
        b'{"src": "c1", "body": {"msg_id": 15, "type": "wal_info"}, "body": {"pad": "'
        + b"r" * 5000
        + b'"}}\n',
        b"x" * 9000 + b"\n",
        b"\xff" * 5000 + b"\n",
        b'{"src": "c\xc3\xa9", "body": {"msg_id": 16, "payload": "' + b"\xc3\xa9" * 3000 + b'"}}\n',
    ]
    b.each(overlong)
    b.step(*overlong, b.append("after the over-long lines"))
    # an over-long line arriving in pieces, a pause between them
    piece = _overlong(b'"msg_id": %d, ' % b.next_id, 12000)
    b.next_id += 1
    b.writes(piece[:3000], piece[3000:4097], piece[4097:9000], piece[9000:], pause=0.05)
    piece = _overlong(b"", 12000)
    b.writes(piece[:4096], piece[4096:4097], piece[4097:] + b.append("next line"), pause=0.05)
    b.step(b.body('"type": "wal_scan", "from_offset": 0, "max_entries": 10000'))
    return b.build()


def megabyte_payloads() -> Session:
    """The default 1 MiB limit: at it and one byte past it, whole and in pieces."""
    b = SessionBuilder("megabyte_payloads")
    b.init()
    mib = 1 << 20
    for text in ("m" * mib, "m" * (mib + 1), "\u00e9" * (mib // 2), "\u00e9" * (mib // 2) + "m"):
        raw = json.dumps(text, ensure_ascii=False).encode()
        b.step(b.line(L.APPEND % raw))
        line = b.line(L.APPEND % raw)
        b.writes(line[: len(line) // 3], line[len(line) // 3 : -1], line[-1:], pause=0.02)
    b.step(b.line(L.APPEND % (b'"' + b"\\u00e9" * (mib // 2) + b'"')))  # 6 bytes a character
    b.step(b.body('"type": "wal_info"'), b.body('"type": "wal_read", "offset": 99'))
    return b.build()


def cut_across_writes() -> Session:
    """Lines cut at every awkward byte: inside a UTF-8 character, between \\r
    and \\n, inside an escape, at a BOM; one line a byte a write; pauses."""
    b = SessionBuilder("cut_across_writes")
    b.init()
    line = b.line(L.APPEND % L._b('"caf\u00e9 \U0001f600 \\u00e9 \\ud83d\\ude00"'))
    for cut in range(len(line)):
        again = b.line(L.APPEND % L._b('"caf\u00e9 \U0001f600 \\u00e9 \\ud83d\\ude00"'))
        b.writes(again[:cut], again[cut:])
    crlf = b.append("crlf")[:-1] + b"\r\n"
    b.writes(crlf[:-1], crlf[-1:], pause=0.05)
    bom = b"\xef\xbb\xbf" + b.append("bom")
    b.writes(bom[:1], bom[1:2], bom[2:], pause=0.02)
    one = b.append("a byte a write")
    b.writes(*(one[i : i + 1] for i in range(len(one))))
    two = b.append("first") + b.append("second")
    b.writes(two[: len(two) // 2 + 7], two[len(two) // 2 + 7 :], pause=0.1)
    # a request whose newline comes in the next write, with another line after it, and a
    # line whose rest (not JSON once glued) comes after a pause
    three = b.append("third")
    fifth = b.append("fifth")[:10]
    b.writes(three[:-1], b"\n" + b.append("fourth") + fifth, b'", "p": "rest"}}\n', pause=0.05)
    b.step(b.body('"type": "wal_scan", "from_offset": 0, "max_entries": 10000'))
    return b.build()


def segments_snapshots_restarts() -> Session:
    """Small segments (many rolls), snapshots and compaction, reads of what was
    compacted, and two restarts on the same data directory."""
    b = SessionBuilder("segments_snapshots_restarts", ("--max-segment-bytes=512",))
    b.init()
    b.step(b.body('"type": "wal_compact", "snapshot_at_offset": 1'))  # no snapshot: 22
    b.step(*(b.append(f"set s{i % 7}={'v' * (i % 40)}") for i in range(300)))
    b.step(b.body('"type": "wal_segment_info"'), b.body('"type": "wal_info"'))
    b.step(b.body('"type": "wal_snapshot"'), *(b.append(f"del s{i}") for i in range(3)))
    b.step(b.body('"type": "wal_compact", "snapshot_at_offset": 150'))
    b.step(b.body('"type": "wal_compact", "snapshot_at_offset": 302'))  # past the snapshot: 22
    b.step(
        b.body('"type": "wal_read", "offset": 10'),
        b.body('"type": "wal_read", "offset": 150'),
        b.body('"type": "wal_scan", "from_offset": 0, "max_entries": 5'),
        b.body('"type": "wal_info"'),
        b.body('"type": "wal_segment_info"'),
    )
    b.step(*(b.body(f'"type": "kv_get", "key": "s{i}"') for i in range(8)))
    b.step(b.body('"type": "wal_segment_config", "max_segment_bytes": 100000'))
    b.step(*(b.append(f"set t{i}=after config") for i in range(50)))
    b.step(b.body('"type": "wal_segment_info"'))
    b.restart()
    b.step(b.body('"type": "wal_info"'), b.append("before init"))
    b.init()
    b.step(b.body('"type": "kv_get", "key": "t3"'), b.body('"type": "wal_segment_info"'))
    b.step(b.body('"type": "wal_info"'), b.body('"type": "wal_read", "offset": 160'))
    b.step(*(b.append(f"set u{i}=after restart") for i in range(40)))
    b.restart()
    b.init()
    b.step(b.body('"type": "kv_get", "key": "u39"'), b.body('"type": "kv_get", "key": "s1"'))
    b.step(b.body('"type": "wal_scan", "from_offset": 140, "max_entries": 10000'))
    return b.build()


CASES = {
    make.__name__: make
    for make in (
        before_and_at_init,
        each_shape_alone,
        shapes_in_bulk,
        limits,
        megabyte_payloads,
        cut_across_writes,
        segments_snapshots_restarts,
    )
}


def all_cases() -> dict[str, Session]:
    return {name: make() for name, make in CASES.items()}
