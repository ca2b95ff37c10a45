"""Valid JSON that is odd: deep nesting, numbers past a double or past Python's
digit limit, a type that is not a string, text that UTF-8 cannot hold.
Each line with a msg_id gets exactly one reply (PROTOCOL.md), and the node
serves on."""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest

from actors.codes import Code

DEPTH = 2000
HUGE_INT = "7" * 5000  # past Python's 4300-digit limit for int(str)


def request_line(body_fields: str, msg_id: str, src: str = '"c1"') -> bytes:
    """A request line written by hand, so that it can hold what json.dumps
    cannot write (1e400, 5000 digits) or nests deeper than it can."""
    return (
        f'{{"src": {src}, "dest": "n1", "body": {{{body_fields}, "msg_id": {msg_id}}}}}\n'
    ).encode()


def deep_loads(line: str) -> dict:
    """json.loads, with room for the depth the replies echo back."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 3 * DEPTH)
    try:
        return json.loads(line)
    finally:
        sys.setrecursionlimit(limit)


def replies_until(node, last_msg_id: int) -> list[tuple[str, dict]]:
    """Every reply line (and its JSON) up to and including the one to `last_msg_id`."""
    out = []
    while True:
        line = node.lines.get(timeout=10)
        assert line is not None, node.stderr_text()
        msg = deep_loads(line)
        out.append((line, msg))
        if msg["body"].get("in_reply_to") == last_msg_id:
            return out


def one_reply_each(node, lines: list[bytes]) -> list[tuple[str, dict]]:
    """Send `lines` (msg_ids 1..n), then an append; each gets exactly one reply."""
    for line in lines:
        node.send_raw(line)
    last = node.send({"type": "wal_append", "payload": "still serving", "msg_id": 10**6})
    replies = replies_until(node, last)
    counts = Counter(json.dumps(r["body"]["in_reply_to"]) for _, r in replies)
    assert counts == Counter(json.dumps(i) for i in [*range(1, len(lines) + 1), last]), replies
    assert replies[-1][1]["body"]["type"] == "wal_append_ok", replies[-1]
    return sorted(replies[:-1], key=lambda r: r[1]["body"]["in_reply_to"])


@pytest.mark.timeout(30)
def test_odd_json_gets_exactly_one_reply_each(node_factory):
    node = node_factory()
    node.init()
    deep = "[" * DEPTH + "]" * DEPTH
    lines = [
        request_line(f'"type": "wal_append", "payload": "x", "extra": {deep}', "1"),
        request_line('"type": "wal_info"', "2", src=deep),
        request_line('"type": "wal_read", "offset": 1e400', "3"),
        request_line('"type": "wal_append", "payload": "y", "size": -1e400', "4"),
        request_line(f'"type": "wal_read", "offset": {HUGE_INT}', "5"),
        request_line('"type": 7', "6"),
        request_line('"type": null', "7"),
        request_line('"type": ["wal_info"]', "8"),
        request_line(f'"type": "wal_info", "big": {HUGE_INT}, "extra": {deep}', "9"),
        # beside the body, and shallow enough for orjson (whose result is kept for
        # scalar envelopes): the same rule
        b'{"src": "c1", "dest": "n1", "extra": %s, "body": {"type": "wal_info", "msg_id": 10}}\n'
        % ("[" * 150 + "]" * 150).encode(),
    ]
    replies = one_reply_each(node, lines)
    assert replies[1][0].startswith(f'{{"src": "n1", "dest": {deep}, "body": '), "echoed exactly"
    deep_extra, deep_src, overflow, overflow_extra, huge, numeric, null, listed, both, beside = (
        msg["body"] for _, msg in replies
    )
    assert both["code"] == Code.MALFORMED_REQUEST, both  # the digits first, then too deep
    for body in (deep_extra, deep_src, beside):
        assert body["code"] == Code.MALFORMED_REQUEST and "deeper than" in body["text"], body
    for body in (overflow, overflow_extra):
        assert body["code"] == Code.MALFORMED_REQUEST and "1e400" in body["text"], body
    assert huge["code"] == Code.MALFORMED_REQUEST and "5000 digits" in huge["text"], huge
    for body in (numeric, null, listed):
        assert body["code"] == Code.NOT_SUPPORTED and "must be a string" in body["text"], body
    assert node.call({"type": "wal_info"})["entries"] == 1  # only the "still serving" append


@pytest.mark.timeout(30)
def test_odd_msg_ids_are_echoed_exactly(node_factory):
    """A msg_id walnode cannot hold as a number is echoed as it was written."""
    node = node_factory()
    node.init()
    for msg_id in ("1e400", HUGE_INT, "[" * DEPTH + "]" * DEPTH):
        node.send_raw(request_line('"type": "wal_info"', msg_id))
        node.send({"type": "wal_info", "msg_id": 10**6})
        line = node.lines.get(timeout=10)
        assert line.startswith('{"src": "n1", "dest": "c1", "body": {"type": "error", '), line
        assert f'"in_reply_to": {msg_id}, "code": 12, ' in line, line[:200]
        assert node.recv()["body"]["in_reply_to"] == 10**6


@pytest.mark.timeout(30)
def test_lone_surrogate_payload_is_refused_not_stored(node_factory):
    node = node_factory()
    node.init()
    for payload in ('"a\\ud800b"', '"\\udfff"', '"\\ud800\\ud800"'):
        node.send_raw(request_line(f'"type": "wal_append", "payload": {payload}', "1"))
        body = node.reply_to(1)["body"]
        assert body["code"] == Code.MALFORMED_REQUEST and "lone surrogate" in body["text"], body
    # a proper pair is one character, stored and read back exactly
    node.send_raw(request_line('"type": "wal_append", "payload": "a\\ud83d\\ude00b"', "2"))
    assert node.reply_to(2)["body"]["length"] == 6
    assert node.call({"type": "wal_read", "offset": 0})["payload"] == "a\U0001f600b"
    assert node.call({"type": "wal_info"})["entries"] == 1
