"""The front's fast path for plain appends agrees with its strict path.

requests.plain_append recognises the common wal_append line and
Front.on_lines forwards runs of them without parse_request/check_request/
Validators. Any line it accepts must be one the strict path accepts with
the same client, msg_id and payload bytes; every other line must be left to
the strict path. Two checks, in-process (seconds):

- line by line: plain_append against the strict path's own verdict, over
  adversarial lines (escapes, unicode, duplicate keys, key order,
  whitespace, number forms, bool msg_id, the payload limit in UTF-8 bytes,
  extra and missing fields, over-long lines) and random ones;
- whole front: two real Front objects, one with the fast path and one
  with plain_append switched off, take the same stream (in chunks, with
  init, reads and errors among the appends, before and after init, with
  the writer up and down); the messages to the writer, the stdout bytes
  and the inbox marks must be identical.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import time
import zlib
from typing import Any

import pytest
import zmq

from actors import front as front_module
from actors import messages as m
from actors import requests
from actors.codes import Code
from actors.front import Front
from actors.inbox import Inbox, OverlongLine
from actors.output import Output
from actors.requests import plain_append
from actors.writer import FsyncPolicy, Writer
from tests.nodeproc import request_line
from wal import DataDir, Log, WalError

LIMIT = 64  # --max-payload-bytes for these tests
KNOWN = frozenset(["init", "wal_append", "wal_read", "wal_info", "status", "wal_recover"])


def strict_verdict(line: bytes) -> tuple:
    """What the strict path makes of a line, as an append: ("append",
    client, msg_id, payload) or why not."""
    if type(line) is OverlongLine:
        return ("overlong",)
    try:
        request = requests.parse_request(line)
    except requests.NotARequest as skip:
        return ("skip", str(skip))
    try:
        requests.check_request(request, KNOWN)
        if request.type != "wal_append":
            return ("other", request.type)
        payload = requests.Validators(LIMIT).wal_append(request.body)
    except requests.BadRequest as err:
        return ("error", err.code, err.text)
    return ("append", request.client, request.msg_id, payload)


def envelope(body: str, src: str = '"c1"', dest: str = '"n1"') -> bytes:
    return f'{{"src": {src}, "dest": {dest}, "body": {body}}}'.encode()


def adversarial_lines() -> list[bytes]:
    canonical = envelope('{"type": "wal_append", "msg_id": 5, "payload": "set k=v"}')
    lines = [
        canonical,
        canonical.replace(b" ", b""),  # compact separators
        b"  \t" + canonical + b" \r",  # JSON whitespace around it
        envelope('{"msg_id": 5, "payload": "x", "type": "wal_append"}'),  # key order
        b'{"body": {"type": "wal_append", "msg_id": 5, "payload": "x"}, "dest": "n1", "src": "c"}',
        OverlongLine(canonical + b" " * 10),  # its head parses: still the strict path's
    ]
    payloads = [
        '"a\\"b"',
        '"back\\\\slash"',
        '"new\\nline"',
        '"\\u00e9t\\u00e9"',
        '"\\ud83d\\ude00"',  # a surrogate pair: one character
        '"\\ud800"',  # a lone surrogate: error 12 in the strict path
        '"\\udc00x"',
        '"é☃😀"',  # raw UTF-8
        '"' + "x" * LIMIT + '"',  # at the limit
        '"' + "x" * (LIMIT + 1) + '"',  # one byte over
        '"' + "é" * (LIMIT // 2) + '"',  # at the limit in bytes, half in characters
        '"' + "é" * (LIMIT // 2) + 'x"',  # over it in bytes only
        '""',
        '"\\u0000"',
        "1",
        "null",
        "true",
        '["x"]',
        '{"x": 1}',
        "1.5",
    ]
    for payload in payloads:
        lines.append(envelope(f'{{"type": "wal_append", "msg_id": 7, "payload": {payload}}}'))
        lines.append(envelope(f'{{"type": "wal_append", "payload": {payload}, "msg_id": 7}}'))
    msg_ids = [
        "0",
        "-0",
        "-1",
        "1.0",
        "1e3",
        "1E3",
        "-0.0",
        "true",
        "false",
        "null",
        '"7"',
        str(2**63 - 1),
        str(2**63),
        str(2**64 - 1),
        str(2**64),
        str(-(2**63)),
        str(-(2**63) - 1),
        "1" * 30,
        "1" * 4301,
        "1e400",
        "[1]",
        "NaN",
        "Infinity",
        "-Infinity",
        "01",
    ]
    for msg_id in msg_ids:
        lines.append(envelope(f'{{"type": "wal_append", "msg_id": {msg_id}, "payload": "x"}}'))
    bodies = [
        '{"type": "wal_append", "payload": "x"}',  # no msg_id: no reply
        '{"type": "wal_append", "msg_id": 3}',  # no payload
        '{"msg_id": 3, "payload": "x"}',  # no type
        '{"type": "wal_append", "msg_id": 3, "payload": "x", "extra": 1}',
        '{"type": "wal_append", "msg_id": 3, "payload": "x", "extra": 1e400}',
        '{"type": "wal_append", "msg_id": 3, "payload": "x", "extra": [1]}',
        # json reads it, walnode refuses it (deeper than MAX_DEPTH), orjson reads it
        '{"type": "wal_append", "msg_id": 3, "payload": "x", "extra": '
        + "[" * 150
        + "]" * 150
        + "}",
        '{"type": "wal_append", "msg_id": 3, "payload": "x", "n": ' + "1" * 30 + "}",
        '{"type": "wal_append", "msg_id": 3, "msg_id": 4, "payload": "x"}',  # duplicates
        '{"type": "wal_append", "msg_id": 3, "payload": "x", "payload": "y"}',
        '{"type": "wal_append", "msg_id": 3, "payload": "x", "payload": 1}',
        '{"type": "wal_read", "msg_id": 3, "payload": "x"}',
        '{"type": "wal_append", "type": "wal_read", "msg_id": 3}',
        '{"type": "wal_read", "type": "wal_append", "msg_id": 3}',
        '{"type": "wal_appendx", "msg_id": 3, "payload": "x"}',
        '{"type": "wal_\\u0061ppend", "msg_id": 3, "payload": "x"}',
        '{"type": ["wal_append"], "msg_id": 3, "payload": "x"}',
        '{"type": null, "msg_id": 3, "payload": "x"}',
        '{"type": "wal_append", "msg_id": 3, "payload": "x"',  # cut short
        "[]",
        "null",
    ]
    for body in bodies:
        lines.append(envelope(body))
    good = '{"type": "wal_append", "msg_id": 9, "payload": "x"}'
    for src, dest in [
        ('"c\\u00e9"', '"n1"'),
        ('"c%d%s"', '"n%"'),  # % in ids: the reply template must not read them
        ('"c\\"q"', '"n1"'),
        ("1", '"n1"'),
        ("null", '"n1"'),
        ('["c"]', '"n1"'),
        ('"c1"', "2"),
        ('"c1"', "null"),
        ('"c1"', '{"x": 1}'),
        ('"c1"', "1e400"),
    ]:
        lines.append(envelope(good, src, dest))
    lines += [
        f'{{"dest": "n1", "body": {good}}}'.encode(),  # no src
        f'{{"src": "c1", "body": {good}}}'.encode(),  # no dest
        f'{{"src": "c1", "dest": "n1", "body": {good}, "extra": 1}}'.encode(),
        f'{{"src": "c1", "dest": "n1", "body": {good}, "x": {"[" * 150 + "]" * 150}}}'.encode(),
        f'{{"src": "c1", "dest": "n1", "body": {good}, "body": {good}}}'.encode(),
        f'{{"src": "c1", "src": "c2", "body": {good}}}'.encode(),
        f'{{"src": "c1", "dest": "n1", "body": {good}}} x'.encode(),  # trailing data
        f'{{"src": "c1", "dest": "n1", "body": {good}}}{{}}'.encode(),
        f'[{{"src": "c1", "dest": "n1", "body": {good}}}]'.encode(),
        b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": 9, '
        b'"payload": "\xff"}}',  # not UTF-8
        b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": 9, '
        b'"payload": "\xed\xa0\x80"}}',  # an encoded surrogate
        b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": 9, '
        b'"payload": "tab\there"}}',  # a raw control character
        b"",
        b"   ",
        b"not json",
    ]
    return lines


def random_lines(rng: random.Random, count: int) -> list[bytes]:
    """Appends drawn from layouts, key orders, payload pieces and field forms."""
    pieces = ["a", "é", "\\n", '\\"', "\\\\", "\\u00e9", "\\ud83d\\ude00", "😀", "%", "x" * 20]
    forms = ["1", "0", "-0", "1.0", "true", '"1"', "null", str(2**64), "12345678901234567890"]
    lines = []
    for _ in range(count):
        payload = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        if rng.random() < 0.05:
            payload += rng.choice(["\\ud800", "\\udfff", "\\u0000", "\t"])
        fields = [
            ('"type"', rng.choice(['"wal_append"', '"wal_append"', '"wal_read"', "1"])),
            ('"msg_id"', rng.choice(forms) if rng.random() < 0.3 else str(rng.randint(0, 10**6))),
            ('"payload"', f'"{payload}"'),
        ]
        if rng.random() < 0.1:
            fields.append((rng.choice(['"payload"', '"msg_id"', '"x"']), rng.choice(forms)))
        rng.shuffle(fields)
        colon, comma = rng.choice([(": ", ", "), (":", ","), (" : ", " , ")])
        body = "{" + comma.join(f"{k}{colon}{v}" for k, v in fields) + "}"
        src = rng.choice(['"c1"', '"c2"', '"c\\u00e9"', "1"])
        lines.append(
            f'{{"src"{colon}{src}{comma}"dest"{colon}"n1"{comma}"body"{colon}{body}}}'.encode()
        )
    return lines


def test_plain_append_accepts_only_what_the_strict_path_accepts_alike() -> None:
    lines = adversarial_lines() + random_lines(random.Random(15), 3000)
    accepted = 0
    for line in lines:
        fast = plain_append(line, LIMIT)
        if fast is None:
            continue
        accepted += 1
        strict = strict_verdict(line)
        assert strict[0] == "append", (line, strict)
        client, msg_id, payload = strict[1:]
        assert fast == (client, msg_id, payload), line
        assert type(fast[1]) is int and type(fast[2]) is bytes, line
    # the fast path is taken at all, for the canonical and most random lines
    assert plain_append(lines[0], LIMIT) == ("c1", 5, b"set k=v")
    assert accepted > 800


# -- the whole front: fast and strict side by side ----------------------------


class Capture:
    """Stands in for a peer's socket: keeps what the front sends, or loses it
    while the peer is down (as a dead process would)."""

    def __init__(self) -> None:
        self.sent: list[list] = []
        self.seen: list[list] = []  # every message, lost or not
        self.alive = True

    def send(self, data: bytes) -> None:
        msg = m.unpack(data)
        self.seen.append(msg)
        if self.alive:
            self.sent.append(msg)


def make_front(tmp_path, name: str) -> tuple[Front, dict[str, Capture], int]:
    run_dir = tmp_path / name
    run_dir.mkdir()
    ctx = zmq.Context.instance()
    front = Front(
        ctx,
        str(run_dir),
        max_payload_bytes=LIMIT,
        max_line_bytes=4096,
        request_timeout=30,
        unavailable_wait=30,
    )
    out_fd = os.open(run_dir / "stdout", os.O_WRONLY | os.O_CREAT, 0o600)
    front.output = Output(out_fd, front.inbox)
    captures = {}
    for name, peer in front.peers.by_name.items():
        peer.sock.close(linger=0)
        peer.sock = captures[name] = Capture()
    return front, captures, out_fd


def refused(payload: bytes) -> bool:
    """The appends the peers' part refuses (about one in 11), by content, so
    that both fronts' streams meet the same refusals inside their runs."""
    return zlib.crc32(payload) % 11 == 0


def answer_everything(front: Front, captures: dict[str, Capture], offset: list[int]) -> None:
    """The peers' part: every request that reached one answered, as the
    writer answers: a lone append with [offset, length, crc], a
    wal_append_run with RUN_OK items around an error for each refused
    append; init ok, other types an error."""
    front.peers.send_outboxes()
    while any(capture.sent for capture in captures.values()):
        for capture in captures.values():
            while capture.sent:
                replies: list[list] = []
                for rid, op, arg in capture.sent.pop(0)[1]:
                    if op == m.OP_APPEND:
                        replies += append_replies(rid, [arg], offset, compact=False)
                    elif op == m.OP_APPEND_RUN:
                        replies += append_replies(rid, arg, offset, compact=True)
                    elif op == m.OP_INIT:
                        replies.append([rid, m.OK, {}])
                    else:
                        text = f"{op} {arg!r}"
                        replies.append([rid, Code.KEY_DOES_NOT_EXIST, {"text": text}])
                front.on_replies(m.unpack(m.pack([m.REPLIES, replies])))
                front.peers.send_outboxes()
    front.flush_output()


def append_replies(first_rid: int, payloads: list, offset: list[int], *, compact: bool) -> list:
    """Appends with rids from first_rid on answered as the writer does:
    refused ones with error 13, the rest at offsets from offset[0] on, in
    RUN_OK items (compact) or one reply each."""
    replies: list[list] = []
    stretch: list[int] = []  # checksums of the RUN_OK item being built
    for rid, payload in enumerate(payloads, first_rid):
        crc = zlib.crc32(payload)
        if refused(payload):
            if stretch:
                replies.append(
                    [rid - len(stretch), m.RUN_OK, [offset[0] - len(stretch), m.pack_crcs(stretch)]]
                )
                stretch = []
            replies.append([rid, Code.CRASH, {"text": f"wal_append failed in the writer: {crc}"}])
            continue
        if compact:
            stretch.append(crc)
        else:
            replies.append([rid, m.OK, m.append_ok_fields(offset[0], len(payload), crc)])
        offset[0] += 1
    if stretch:
        rid = first_rid + len(payloads)
        replies.append(
            [rid - len(stretch), m.RUN_OK, [offset[0] - len(stretch), m.pack_crcs(stretch)]]
        )
    return replies


def as_single_appends(messages: list[list]) -> list[list]:
    """Messages to a peer with each wal_append_run written as the lone
    wal_appends it stands for (its rids in a row)."""
    out = []
    for kind, items in messages:
        flat = []
        for rid, op, arg in items:
            if op == m.OP_APPEND_RUN:
                flat += [[rid + i, m.OP_APPEND, payload] for i, payload in enumerate(arg)]
            else:
                flat.append([rid, op, arg])
        out.append([kind, flat])
    return out


def run_stream(front: Front, captures: dict[str, Capture], chunks: list) -> list:
    """Feed the chunks, answering after two of every three (so an init can
    still be pending when the next chunk is read); every message sent to
    a peer, in order."""
    offset = [0]
    writer = front.peers.by_name["writer"]
    for i, chunk in enumerate(chunks):
        if chunk is WRITER_DOWN:  # with nothing in flight: a strict front loses nothing
            answer_everything(front, captures, offset)
            writer.up = captures["writer"].alive = False
        elif chunk is WRITER_UP:
            writer.up = captures["writer"].alive = True
            front.fail_all(front.peers.up(writer))  # what it held is sent now
        else:
            front.on_lines(front.inbox.feed(chunk))
        if i % 3:
            answer_everything(front, captures, offset)
    front.on_lines(front.inbox.finish())
    answer_everything(front, captures, offset)
    return [capture.seen for capture in captures.values()]


# markers in the list of chunks
WRITER_DOWN = object()
WRITER_UP = object()


def stream_chunks(rng: random.Random) -> list:
    lines = adversarial_lines()
    lines = [line for line in lines if type(line) is bytes]
    lines += random_lines(rng, 1500)
    control = [
        b'{"src": "c0", "dest": "n1", "body": {"type": "wal_read", "msg_id": 100001, "offset": 0}}',
        b'{"src": "c0", "dest": "n1", "body": {"type": "wal_info", "msg_id": 100002}}',
        # a later init names the node anew: the appends read after it wait for
        # it, and their replies come from the new id
        b'{"src": "c0", "dest": "n1", "body": {"type": "init", "msg_id": 100003, '
        b'"node_id": "n2", "node_ids": ["n1", "n2"]}}',
    ]
    first_init = (
        b'{"src": "c0", "dest": "n1", "body": {"type": "init", "msg_id": 100004, "node_id": "n1"}}'
    )
    stream = [*lines[:40]]  # before init: error 11 for appends
    stream.append(first_init)
    rest = lines[40:]
    rng.shuffle(rest)
    for i, line in enumerate(rest):
        stream.append(line)
        if i % 97 == 0:
            stream.append(rng.choice(control))
    data = b"\n".join(stream) + b"\n"
    chunks = []
    pos = 0
    while pos < len(data):  # cuts anywhere, lines split across chunks included
        step = rng.randint(1, 6000)
        chunks.append(data[pos : pos + step])
        pos += step
    middle = len(chunks) // 2  # then the first 5 chunks from there without an init
    while b'"init"' in b"".join(chunks[middle - 1 : middle + 5]):  # nor one cut across
        middle += 1
    chunks[middle : middle + 5] = [WRITER_DOWN, *chunks[middle : middle + 5], WRITER_UP]
    return chunks


@pytest.mark.timeout(60)
def test_front_answers_a_stream_identically_with_and_without_the_fast_path(
    tmp_path, monkeypatch
) -> None:
    chunks = stream_chunks(random.Random(1515))
    taken = []
    real = front_module.plain_append

    def counted(line: bytes, limit: int) -> Any:
        append = real(line, limit)
        if append is not None:
            taken.append(line)
        return append

    monkeypatch.setattr(front_module, "plain_append", counted)
    fast, fast_capture, fast_fd = make_front(tmp_path, "fast")
    fast_sent = run_stream(fast, fast_capture, chunks)
    assert len(taken) > 300  # the fast path was taken, for most valid appends
    monkeypatch.setattr(front_module, "plain_append", lambda line, limit: None)
    strict, strict_capture, strict_fd = make_front(tmp_path, "strict")
    strict_sent = run_stream(strict, strict_capture, chunks)
    assert fast.state.acked_next == strict.state.acked_next  # kv_get's read-your-writes
    for front, fd in ((fast, fast_fd), (strict, strict_fd)):
        os.close(fd)
        front.inbox.close()
        front.control.close(linger=0)
    # the writer gets the same requests, payloads, order (the fast path's in runs)
    assert any(op == m.OP_APPEND_RUN for _, requests in fast_sent[0] for _, op, _ in requests)
    assert [as_single_appends(sent) for sent in fast_sent] == strict_sent
    for name in ("stdout", "front.answered"):
        fast_bytes = (tmp_path / "fast" / name).read_bytes()
        strict_bytes = (tmp_path / "strict" / name).read_bytes()
        assert fast_bytes == strict_bytes, name
    stdout = (tmp_path / "fast" / "stdout").read_bytes()
    kinds = {json.loads(line)["body"]["type"] for line in stdout.splitlines()}
    assert {"wal_append_ok", "error", "init_ok"} <= kinds
    assert b"wal_append failed in the writer" in stdout  # refusals inside runs
    assert b'"src": "n2", "dest": "c1", "body": {"type": "wal_append_ok"' in stdout


def test_inbox_splits_a_run_of_lines_as_it_splits_them_one_by_one(tmp_path) -> None:
    """Inbox._split takes the whole lines of a chunk in one split; fed one
    byte at a time it takes each line alone (every line is a partial one
    first). The lines, their starts and the open set must be the same."""
    rng = random.Random(7)
    for trial in range(200):
        limit = rng.choice([5, 20, 100])
        lines = [b"ab \t{}"[: rng.randint(0, 6)] * rng.choice([0, 1, 5, 40]) for _ in range(30)]
        data = b"\n".join(lines) + rng.choice([b"\n", b"", b"tail"])
        results = []
        for name, step in (("whole", len(data) + 1), ("bytes", 1), ("random", 0)):
            run_dir = tmp_path / f"{trial}-{name}"
            run_dir.mkdir()
            inbox = Inbox(str(run_dir), limit)
            got, pos = [], 0
            while pos < len(data):
                size = step or rng.randint(1, 40)
                got += inbox.feed(data[pos : pos + size])
                pos += size
            got += inbox.finish()
            inbox.close()
            # an over-long line's head depends on the chunks it came in; its start does not
            results.append(
                (
                    [
                        (s, type(line) is OverlongLine, line if type(line) is bytes else b"")
                        for s, line in got
                    ],
                    list(inbox.open),
                )
            )
        assert results[0] == results[1] == results[2], data


def test_output_cuts_whole_line_chunks_from_blocks(tmp_path, monkeypatch) -> None:
    """Replies queued as blocks of lines (a run of append replies) and as
    single lines go out as chunks of whole lines of at most PIPE_BUF bytes
    (a longer line alone), in order, each chunk's lines marked just before
    its write."""
    from actors import output as output_module

    writes: list[tuple[bytes, list[int]]] = []
    marked: list[int] = []
    inbox = Inbox(str(tmp_path), 1 << 20)
    monkeypatch.setattr(inbox, "answered_many", lambda starts: marked.extend(starts))
    monkeypatch.setattr(
        output_module, "write_all", lambda fd, data: writes.append((data, marked[:]))
    )
    out_fd = os.open(tmp_path / "stdout", os.O_WRONLY | os.O_CREAT, 0o600)
    out = Output(out_fd, inbox)  # a file: every chunk is written at once
    rng = random.Random(3)
    expected: list[bytes] = []
    start = 0
    for _ in range(300):
        count = rng.choice([1, 1, 5, 40])
        lines = [b"x" * rng.choice([0, 10, 150, 4095, 5000]) + b"\n" for _ in range(count)]
        starts = list(range(start, start + count))
        start += count
        if count == 1 and rng.random() < 0.5:
            out.add(lines[0][:-1].decode(), starts[0])
        else:
            out.add_lines(b"".join(lines), starts)
        expected += lines
        if rng.random() < 0.3:
            out.write_ready()
    out.write_ready()
    os.close(out_fd)
    inbox.close()
    assert not out and out.queued_bytes == 0
    assert b"".join(data for data, _ in writes) == b"".join(expected)
    assert marked == list(range(start))
    done = 0
    for data, marks in writes:
        assert data.endswith(b"\n")
        assert len(data) <= output_module.PIPE_BUF or data.count(b"\n") == 1
        done += data.count(b"\n")
        assert len(marks) == done  # this chunk's lines, and no later one, were marked first


# -- the writer: a run's compact reply against its appends one by one ---------


def open_writer(path: str) -> Writer:
    datadir = DataDir(path)
    datadir.lock("test writer")
    wal, _ = Log.open(datadir.wal_dir, max_segment_bytes=600)  # rolls inside runs
    return Writer(datadir, wal, FsyncPolicy.parse("always"))


def expand_run_replies(replies: list, payloads: dict[int, bytes]) -> list:
    """A wal_append_run's replies (RUN_OK items among lone errors) as the
    per-append replies they stand for: [rid, OK, [offset, length, crc]]."""
    out = []
    for rid, code, fields in replies:
        if code != m.RUN_OK:
            out.append([rid, code, fields])
            continue
        first_offset, packed = fields
        for i, crc in enumerate(m.unpack_crcs(packed)):
            length = len(payloads[rid + i])
            out.append([rid + i, m.OK, m.append_ok_fields(first_offset + i, length, crc)])
    return out


@pytest.mark.timeout(60)
def test_writer_answers_a_run_as_it_answers_its_appends_one_by_one(tmp_path, monkeypatch) -> None:
    """The same batches to two writers, one as lone wal_appends and one as
    wal_append_runs, with the same faults inside them: the log refusing an
    append (a WalError), a full disk at a roll (the rest of the batch gets
    11) and a full disk at the commit's write (what was staged is dropped:
    11 for each, after the RUN_OK was built). The run's replies, expanded,
    must be the lone appends' replies exactly, and the logs the same."""
    from wal import segment as segment_module

    writes = {"count": 0, "fail_at": -1}
    real_write_all = segment_module.write_all

    def write_all(fd: int, data: bytes) -> None:
        writes["count"] += 1
        if writes["count"] == writes["fail_at"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(fd, data)

    monkeypatch.setattr(segment_module, "write_all", write_all)
    writers = {name: open_writer(str(tmp_path / name)) for name in ("lone", "run")}
    for writer in writers.values():
        real_append_many = writer.log.append_many

        def append_many(payloads: list, staged: list, real: Any = real_append_many) -> None:
            for i, payload in enumerate(payloads):
                if payload.startswith(b"refuse"):
                    real(payloads[:i], staged)
                    raise WalError("refused for the test")
            real(payloads, staged)

        monkeypatch.setattr(writer.log, "append_many", append_many)
    rng = random.Random(15)
    rid = 0
    results: dict[str, list] = {"lone": [], "run": []}
    for _ in range(60):
        payloads = [
            (b"refuse%d" if rng.random() < 0.08 else b"p%d=" + b"x" * rng.randint(0, 90)) % i
            for i in range(rng.randint(1, 40))
        ]
        by_rid = dict(enumerate(payloads, rid + 1))
        # the same write fails in both: a roll's flush inside the run, or the commit's
        fault = rng.choice([None, None, None, 1, 2, 3])
        for name, writer in writers.items():
            if name == "lone":
                requests = [[r, m.OP_APPEND, p] for r, p in by_rid.items()]
            else:
                requests = [[rid + 1, m.OP_APPEND_RUN, payloads]]
            writes["count"], writes["fail_at"] = 0, fault or -1
            handled = writer.handle(requests)
            writer.commit()
            replies = m.unpack(m.pack(writer.replies(handled)))
            writer.disk_full_at = None  # Commits.reply: the next batch starts afresh
            if name == "run":
                replies = expand_run_replies(replies, by_rid)
            results[name].append(replies)
        rid += len(payloads)
    assert results["lone"] == results["run"]
    codes = {code for replies in results["run"] for _, code, _ in replies}
    assert codes == {m.OK, Code.CRASH, Code.TEMPORARILY_UNAVAILABLE}  # every fault struck
    scans = [
        [(e.offset, e.payload) for e in w.log.scan(0, 10_000, 1 << 30)] for w in writers.values()
    ]
    assert scans[0] == scans[1] and len(scans[0]) > 100
    for writer in writers.values():
        writer.log.close()


# -- a real node: the writer killed in the middle of runs ---------------------


@pytest.mark.timeout(90)
def test_writer_killed_mid_run_gives_every_msg_id_exactly_one_reply(node_factory, data_dir):
    """Thousands of plain appends in one write go to the writer as runs; the
    writer is stopped wherever it is, sent more, and SIGKILLed: it dies
    holding runs. Every msg_id gets exactly one reply (wal_append_ok, or 13 for
    what the dead writer held, or 11), no offset is given twice, and after
    a restart the log holds each acknowledged payload at its offset."""
    node = node_factory(f"--data-dir={data_dir}", "--unavailable-wait=20")
    node.init()
    writer = node.pids()["writer"]
    count = 6000
    payloads = {1 + i: f"set k{i}=" + "v" * (i % 50) for i in range(count)}
    lines = b"".join(
        request_line({"type": "wal_append", "msg_id": msg_id, "payload": payload})
        for msg_id, payload in payloads.items()
    )
    half = len(lines) // 2
    node.send_raw(lines[:half])
    first = node.reply_to(1)["body"]  # the first runs are answered: the writer is mid-stream
    os.kill(writer, signal.SIGSTOP)  # wherever it is; what is sent now it surely holds
    node.send_raw(lines[half:])
    time.sleep(0.5)  # forwarded to it as runs
    os.kill(writer, signal.SIGKILL)
    replies: dict[int, list[dict]] = {1: [first]}
    for msg_id in list(payloads)[1:]:
        body = node.reply_to(msg_id, timeout=30)["body"]
        replies.setdefault(msg_id, []).append(body)
    assert node.close() == 0
    for msg in node.remaining():  # nothing more: a second reply would be here
        replies.setdefault(msg["body"].get("in_reply_to"), []).append(msg["body"])
    assert all(len(bodies) == 1 for bodies in replies.values()), "a msg_id answered twice"
    assert set(replies) == set(payloads)
    acked = {
        b[0]["offset"]: msg_id for msg_id, b in replies.items() if b[0]["type"] == "wal_append_ok"
    }
    failed = [b[0] for b in replies.values() if b[0]["type"] == "error"]
    assert len(acked) + len(failed) == count  # no offset given twice
    assert failed and {b["code"] for b in failed} <= {Code.CRASH, Code.TEMPORARILY_UNAVAILABLE}
    assert first["type"] == "wal_append_ok" and first["offset"] in acked  # it was mid-stream
    node = node_factory(f"--data-dir={data_dir}")
    node.init()
    scan = node.call_ok({"type": "wal_scan", "from_offset": 0, "max_entries": 10_000})
    stored = {e["offset"]: e["payload"] for e in scan["entries"]}
    assert all(stored.get(offset) == payloads[msg_id] for offset, msg_id in acked.items())
    assert node.close() == 0
