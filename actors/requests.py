"""What a request line means: the front's requests.

parse_request turns a line (read by actors/jsontext.py) into a Request, or
says why it cannot be answered; check_request and Validators check its
fields and give the op's argument; plain_append recognises the common
wal_append line at once; recover_reply answers wal_recover alone.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import orjson

from actors.codes import Code
from actors.jsontext import decode_line, show
from actors.messages import OP_APPEND
from wal.statemachine import replay

_loads = orjson.loads

SCAN_MAX_ENTRIES = 10_000
FSYNC_BENCH_MAX_ENTRIES = 20_000  # ~3 s of one-fsync-per-write here
FSYNC_STRATEGIES = ("always", "batch_10ms", "none")


class BadRequest(Exception):
    """A request the front answers with an error without forwarding it."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


# -- validation: one function per forwarded type, returning the op argument


MAX_INT = 2**63 - 1  # offsets and sizes travel as msgpack integers


def _int(body: dict, name: str, *, default: int | None = None, minimum: int = 0) -> int:
    value = body.get(name, default)
    if value is None:
        raise BadRequest(
            Code.MALFORMED_REQUEST, f"missing field {name!r}: give an integer >= {minimum}"
        )
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(Code.MALFORMED_REQUEST, f"{name} must be an integer, got {show(value)}")
    if value < minimum:
        raise BadRequest(Code.MALFORMED_REQUEST, f"{name} must be >= {minimum}, got {value}")
    if value > MAX_INT:
        raise BadRequest(Code.MALFORMED_REQUEST, f"{name} must be at most {MAX_INT}, got {value}")
    return value


def _str(body: dict, name: str) -> str:
    """A string field that UTF-8 can hold, so that it reads back exactly."""
    value = body.get(name)
    if value is None:
        raise BadRequest(Code.MALFORMED_REQUEST, f"missing field {name!r}: give a string")
    if not isinstance(value, str):
        raise BadRequest(Code.MALFORMED_REQUEST, f"{name} must be a string, got {show(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadRequest(
            Code.MALFORMED_REQUEST,
            f"{name} holds a lone surrogate (U+{ord(value[err.start]):04X} at character "
            f"{err.start}), which UTF-8 cannot store, so it could not be read back as sent; "
            f"send Unicode text (a surrogate only as half of a pair)",
        ) from None
    return value


def _node_id(value: str, name: str) -> str:
    """A node id: replies carry it as src, and a restarted front reads it back."""
    if not value:
        raise BadRequest(Code.MALFORMED_REQUEST, f'{name} must be a non-empty string, got ""')
    return value


# -- the envelope ------------------------------------------------------------


class NotARequest(Exception):
    """A line that cannot be answered (PROTOCOL.md): logged and skipped."""


@dataclass(slots=True)
class Request:
    """A request line's envelope and body."""

    client: Any  # the request's src: where the reply goes
    node: Any  # the request's dest: the reply's src until init names the node
    msg_id: Any
    type: Any  # a str, or what check_request refuses with NOT_SUPPORTED
    body: dict
    unreadable: str | None  # why the line holds what walnode cannot serve


def parse_request(line: bytes) -> Request:
    """The request on one non-blank line; NotARequest if it cannot be answered:
    not JSON, or no body object with a type in it."""
    try:
        msg, unreadable = decode_line(line)
    except ValueError:
        raise NotARequest("a line that is not JSON") from None
    body = msg.get("body") if isinstance(msg, dict) else None
    if not isinstance(body, dict) or "type" not in body:
        raise NotARequest("a message without body.type")
    return Request(
        msg.get("src"), msg.get("dest"), body.get("msg_id"), body["type"], body, unreadable
    )


def plain_append(line: bytes, max_payload_bytes: int) -> tuple[str, int, bytes] | None:
    """The common wal_append line, read without the strict path's per-field
    work: (client, msg_id, payload bytes) if parse_request, check_request and
    Validators.wal_append would accept it with exactly those values, else
    None (the caller then takes the strict path, which says what is wrong).

    It accepts only what decode_line keeps from orjson (an envelope and a body
    of scalars: here exactly src, dest and body, and a body of exactly type,
    msg_id and payload), with a str src and dest, type "wal_append", an int
    msg_id (not bool) and a str payload within the limit in UTF-8 bytes;
    orjson's str never holds a lone surrogate. Every other line is None:
    an OverlongLine (its head may parse), other keys, other types, any
    line orjson refuses."""
    if type(line) is not bytes:
        return None
    try:
        msg = _loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(msg) is not dict or len(msg) != 3:
        return None
    body = msg.get("body")
    client = msg.get("src")
    if (
        type(body) is not dict
        or len(body) != 3
        or type(client) is not str
        or type(msg.get("dest")) is not str
        or body.get("type") != OP_APPEND
    ):
        return None
    msg_id = body.get("msg_id")
    payload = body.get("payload")
    if type(msg_id) is not int or type(payload) is not str:
        return None
    data = payload.encode("utf-8")
    if len(data) > max_payload_bytes:
        return None
    return client, msg_id, data


def check_request(request: Request, known_types: Collection[str]) -> None:
    """BadRequest for a request no type's validator can look at: its msg_id,
    its type, or what it holds."""
    msg_id = request.msg_id
    if msg_id is not None and (not isinstance(msg_id, int) or isinstance(msg_id, bool)):
        raise BadRequest(Code.MALFORMED_REQUEST, f"msg_id must be an integer, got {show(msg_id)}")
    if not isinstance(request.type, str):
        raise BadRequest(
            Code.NOT_SUPPORTED,
            f"body.type must be a string naming a message type, got {show(request.type)}; "
            f"walnode serves {', '.join(sorted(known_types))}",
        )
    if request.type not in known_types:
        raise BadRequest(
            Code.NOT_SUPPORTED,
            f"unknown message type {request.type!r}; walnode serves "
            f"{', '.join(sorted(known_types))}",
        )
    if request.unreadable is not None:
        raise BadRequest(Code.MALFORMED_REQUEST, request.unreadable)


class Validators:
    def __init__(self, max_payload_bytes: int) -> None:
        self.max_payload_bytes = max_payload_bytes

    def init(self, body: dict) -> list:
        node_id = _node_id(_str(body, "node_id"), "node_id")
        ids = body.get("node_ids", [node_id])
        if not isinstance(ids, list):
            raise BadRequest(Code.MALFORMED_REQUEST, "node_ids must be a list of strings")
        for i, other in enumerate(ids):
            _node_id(_str({f"node_ids[{i}]": other}, f"node_ids[{i}]"), f"node_ids[{i}]")
        return [node_id, ids]

    def wal_append(self, body: dict) -> bytes:
        payload = _str(body, "payload").encode("utf-8")
        if len(payload) > self.max_payload_bytes:
            raise BadRequest(
                Code.MALFORMED_REQUEST,
                f"payload is {len(payload)} bytes, over the limit of "
                f"{self.max_payload_bytes} (--max-payload-bytes); split it",
            )
        return payload

    def wal_read(self, body: dict) -> int:
        return _int(body, "offset")

    def wal_scan(self, body: dict) -> list:
        max_entries = _int(body, "max_entries", default=100, minimum=1)
        return [_int(body, "from_offset"), min(max_entries, SCAN_MAX_ENTRIES)]

    def wal_info(self, body: dict) -> None:
        return None

    wal_sync = wal_segment_info = wal_info

    def wal_segment_config(self, body: dict) -> int:
        return _int(body, "max_segment_bytes", minimum=1)

    def kv_get(self, body: dict) -> str:
        return _str(body, "key")

    def wal_snapshot(self, body: dict) -> None:
        return None

    def wal_compact(self, body: dict) -> int:
        return _int(body, "snapshot_at_offset")

    def fsync_benchmark(self, body: dict) -> list:
        entries = _int(body, "entries", default=1000, minimum=1)
        if entries > FSYNC_BENCH_MAX_ENTRIES:
            raise BadRequest(
                Code.MALFORMED_REQUEST,
                f"entries is capped at {FSYNC_BENCH_MAX_ENTRIES}, got {entries}",
            )
        strategies = body.get("strategies", list(FSYNC_STRATEGIES))
        if (
            not isinstance(strategies, list)
            or not strategies
            or not all(s in FSYNC_STRATEGIES for s in strategies)
        ):
            raise BadRequest(
                Code.MALFORMED_REQUEST,
                f"strategies must be a non-empty list drawn from {list(FSYNC_STRATEGIES)}",
            )
        return [entries, strategies]


def recover_reply(body: dict) -> dict:
    """wal_recover: a pure replay over the entries given (course task 10-1-2)."""
    entries = body.get("wal_entries")
    if not isinstance(entries, list):
        raise BadRequest(
            Code.MALFORMED_REQUEST, "wal_entries must be a list of {offset, payload, checksum}"
        )
    pairs = []
    for i, e in enumerate(entries):
        if (
            not isinstance(e, dict)
            or not isinstance(e.get("payload"), str)
            or e.get("checksum") not in ("valid", "invalid")
        ):
            raise BadRequest(
                Code.MALFORMED_REQUEST,
                f"wal_entries[{i}] must be an object with a string payload and "
                f'checksum "valid" or "invalid"',
            )
        pairs.append((e["payload"], e["checksum"] == "valid"))
    replayed, skipped, state = replay(pairs)
    return {"entries_replayed": replayed, "entries_skipped": skipped, "state": state}
