"""What a request line means, and how a reply is written: the front's JSON.

parse_request turns a line into a Request (or says why it cannot be
answered), Validators check each forwarded type's fields and give the op's
argument, recover_reply answers wal_recover alone, and ReplyFormatter prints
a reply in the exact layout of PROTOCOL.md.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from wal.statemachine import replay

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
        raise BadRequest(12, f"missing field {name!r}: give an integer >= {minimum}")
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(12, f"{name} must be an integer, got {json.dumps(value)}")
    if value < minimum:
        raise BadRequest(12, f"{name} must be >= {minimum}, got {value}")
    if value > MAX_INT:
        raise BadRequest(12, f"{name} must be at most {MAX_INT}, got {value}")
    return value


def _str(body: dict, name: str, *, surrogates: bool = False) -> str:
    """A string field; lone surrogates only where the caller encodes them itself."""
    value = body.get(name)
    if value is None:
        raise BadRequest(12, f"missing field {name!r}: give a string")
    if not isinstance(value, str):
        raise BadRequest(12, f"{name} must be a string, got {json.dumps(value)}")
    try:
        if not surrogates:
            value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(12, f"{name} must be Unicode text; it holds a lone surrogate") from None
    return value


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} overflows a double")
    return value


# json without NaN/Infinity, also not as overflowing numbers (1e400)
_STRICT_JSON = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite_float)
_EXACT = frozenset([str, int, bool, type(None)])


def parse_json(line: bytes) -> Any:
    """One request line, as json's strict decoder reads it. orjson is ~6x
    faster and agrees, except that it refuses some lines json reads (lone
    surrogates, 1e400) and reads integers past 64 bits as floats. So its
    result is kept only where no float (or nested value) could be such an
    integer: string src and dest, a body of scalars. Other lines are rare."""
    try:
        msg = orjson.loads(line)
    except orjson.JSONDecodeError:
        msg = None
    if type(msg) is dict:
        body = msg.get("body")
        if type(msg.get("src")) is str and type(msg.get("dest")) is str and type(body) is dict:
            for value in body.values():
                if type(value) not in _EXACT:
                    break
            else:
                return msg
    return _STRICT_JSON.decode(line.decode("utf-8", "surrogatepass"))  # as json.loads does


class NotARequest(Exception):
    """A line that cannot be answered (PROTOCOL.md): logged and skipped."""


@dataclass(slots=True)
class Request:
    """A request line's envelope and body."""

    client: Any  # the request's src: where the reply goes
    node: Any  # the request's dest: the reply's src until init names the node
    msg_id: Any
    type: str
    body: dict


def parse_request(line: bytes) -> Request:
    """The request on one non-blank line; NotARequest if it cannot be answered."""
    try:
        msg = parse_json(line)
    except ValueError:
        raise NotARequest("a line that is not JSON") from None
    body = msg.get("body") if isinstance(msg, dict) else None
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise NotARequest("a message without body.type")
    return Request(msg.get("src"), msg.get("dest"), body.get("msg_id"), body["type"], body)


def check_msg_id(msg_id: Any) -> None:
    if msg_id is not None and (not isinstance(msg_id, int) or isinstance(msg_id, bool)):
        raise BadRequest(12, f"msg_id must be an integer, got {json.dumps(msg_id)}")


class Validators:
    def __init__(self, max_payload_bytes: int) -> None:
        self.max_payload_bytes = max_payload_bytes

    def init(self, body: dict) -> list:
        node_id = _str(body, "node_id")
        ids = body.get("node_ids", [node_id])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise BadRequest(12, "node_ids must be a list of strings")
        for i in range(len(ids)):
            _str({"id": ids[i]}, "id")  # text that travels: no lone surrogates
        return [node_id, ids]

    def wal_append(self, body: dict) -> bytes:
        payload = _str(body, "payload", surrogates=True).encode("utf-8", "surrogatepass")
        if len(payload) > self.max_payload_bytes:
            raise BadRequest(
                12,
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
            raise BadRequest(12, f"entries is capped at {FSYNC_BENCH_MAX_ENTRIES}, got {entries}")
        strategies = body.get("strategies", list(FSYNC_STRATEGIES))
        if (
            not isinstance(strategies, list)
            or not strategies
            or not all(s in FSYNC_STRATEGIES for s in strategies)
        ):
            raise BadRequest(
                12, f"strategies must be a non-empty list drawn from {list(FSYNC_STRATEGIES)}"
            )
        return [entries, strategies]


def recover_reply(body: dict) -> dict:
    """wal_recover: a pure replay over the entries given (course task 10-1-2)."""
    entries = body.get("wal_entries")
    if not isinstance(entries, list):
        raise BadRequest(12, "wal_entries must be a list of {offset, payload, checksum}")
    pairs = []
    for i, e in enumerate(entries):
        if (
            not isinstance(e, dict)
            or not isinstance(e.get("payload"), str)
            or e.get("checksum") not in ("valid", "invalid")
        ):
            raise BadRequest(
                12,
                f"wal_entries[{i}] must be an object with a string payload and "
                f'checksum "valid" or "invalid"',
            )
        pairs.append((e["payload"], e["checksum"] == "valid"))
    replayed, skipped, state = replay(pairs)
    return {"entries_replayed": replayed, "entries_skipped": skipped, "state": state}


APPEND_OK = "wal_append_ok"
# json.dumps's layout of a wal_append_ok reply (PROTOCOL.md), field for field
APPEND_OK_LINE = (
    '{{"src": {}, "dest": {}, "body": {{"type": "wal_append_ok", "in_reply_to": {}, '
    '"offset": {}, "length": {}, "checksum": "{}", "msg_id": {}}}}}'
)


class ReplyFormatter:
    """Reply lines in json.dumps's layout (PROTOCOL.md), without the newline."""

    def __init__(self) -> None:
        self._json_strs: dict[str, str] = {}

    def line(
        self, src: Any, dest: Any, in_reply_to: Any, typ: str, fields: dict, msg_id: int
    ) -> str:
        if typ == APPEND_OK and type(in_reply_to) is int and type(src) is type(dest) is str:
            # The hot path, formatted directly: json.dumps costs ~5 us a reply.
            return APPEND_OK_LINE.format(
                self.json_str(src),
                self.json_str(dest),
                in_reply_to,
                fields["offset"],
                fields["length"],
                fields["checksum"],
                msg_id,
            )
        body = {"type": typ, "in_reply_to": in_reply_to}
        body.update(fields)
        body["msg_id"] = msg_id
        return json.dumps({"src": src, "dest": dest, "body": body})

    def json_str(self, text: str) -> str:
        """json.dumps(text), remembered: node and client ids repeat on every reply."""
        encoded = self._json_strs.get(text)
        if encoded is None:
            if len(self._json_strs) > 10_000:
                self._json_strs.clear()
            encoded = self._json_strs[text] = json.dumps(text)
        return encoded


# The envelope of a line too long to parse, as far as its first bytes name it.
# A key cannot be mistaken inside a string, where quotes are escaped.
_ENVELOPE_STR = {
    name: re.compile(rb'"' + name.encode() + rb'"\s*:\s*("(?:[^"\\]|\\.)*")')
    for name in ("src", "dest")
}
_ENVELOPE_MSG_ID = re.compile(rb'"msg_id"\s*:\s*(-?\d{1,19})\s*[,}]')


def overlong_envelope(head: bytes) -> tuple[Any, Any, int | None]:
    """(client, node, msg_id) of an over-long line from its first bytes;
    None for what they do not name."""
    found: dict[str, Any] = {}
    for name, pattern in _ENVELOPE_STR.items():
        match = pattern.search(head)
        try:
            found[name] = json.loads(match.group(1)) if match else None
        except ValueError:
            found[name] = None
    match = _ENVELOPE_MSG_ID.search(head)
    return found["src"], found["dest"], int(match.group(1)) if match else None
