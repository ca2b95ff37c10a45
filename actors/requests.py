"""What a request line means, and how a reply is written: the front's JSON.

parse_request turns a line into a Request (or says why it cannot be
answered), Validators check each forwarded type's fields and give the op's
argument, recover_reply answers wal_recover alone, and ReplyFormatter prints
a reply in the exact layout of PROTOCOL.md.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import orjson

from actors.codes import Code
from actors.messages import OP_APPEND, append_fields
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


# -- parsing: JSON as json.loads reads it, for any depth and any number -----

MAX_DEPTH = 100  # arrays and objects nested deeper are refused (no request needs more than 4)
TOO_DEEP = (
    f"the request nests arrays and objects deeper than {MAX_DEPTH} levels, "
    f"more than walnode reads; send a flatter request"
)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A JSON value walnode cannot hold exactly (a number past a double or
    past Python's digit limit, arrays nested past MAX_DEPTH): its text, kept
    so that a reply can echo it, and why a request holding it is refused."""

    text: str
    why: str


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _float(text: str) -> float | Unreadable:
    value = float(text)
    if math.isinf(value):
        return Unreadable(
            text,
            f"the number {text} is beyond a 64-bit float's range (about 1.8e308), so "
            f"walnode cannot read it; send a smaller number",
        )
    return value


def _integer(text: str) -> int | Unreadable:
    try:
        return int(text)
    except ValueError:  # past sys.get_int_max_str_digits(): int() would be quadratic
        digits = len(text.lstrip("-"))
        return Unreadable(
            text,
            f"an integer of {digits} digits ({text[:12]}...) is longer than walnode reads "
            f"({sys.get_int_max_str_digits()} digits); send a shorter one",
        )


# json without NaN/Infinity; numbers it cannot hold become Unreadable
_STRICT_JSON = json.JSONDecoder(parse_constant=_not_json, parse_float=_float)
# the same with big integers too (int() is slower called from here: only on retry)
_STRICT_JSON_BIG_INTS = json.JSONDecoder(
    parse_constant=_not_json, parse_float=_float, parse_int=_integer
)
_EXACT = frozenset([str, int, bool, type(None)])
_loads = orjson.loads


def _decode(line: bytes) -> tuple[Any, str | None]:
    """One request line, as json's strict decoder reads it, and why it cannot
    be served (an Unreadable in it, or TOO_DEEP), if so. orjson is ~6x faster
    and agrees, except that it refuses some lines json reads (lone
    surrogates, 1e400, deep nesting) and reads integers past 64 bits as
    floats. So its result is kept only where no float (or nested value)
    could be such an integer: an envelope and a body of scalars. Other
    lines are rare."""
    try:
        msg = orjson.loads(line)
    except orjson.JSONDecodeError:
        msg = None
    if type(msg) is dict and type(body := msg.get("body")) is dict:
        for value in msg.values():  # scalars only, but for the body ...
            if type(value) not in _EXACT and value is not body:
                break
        else:
            for value in body.values():  # ... which holds scalars only
                if type(value) not in _EXACT:
                    break
            else:
                return msg, None
    text = line.decode("utf-8", "surrogatepass")  # as json.loads does
    try:
        try:
            msg = _STRICT_JSON.decode(text)
        except ValueError:  # not JSON, or an integer past the digit limit
            msg = _STRICT_JSON_BIG_INTS.decode(text)  # not JSON at all raises again
    except RecursionError:  # json's decoder recurses; deep lines get the loop
        msg = parse_nested(text)
        return msg, _first_unreadable(msg)
    why = _first_unreadable(msg)
    if why == TOO_DEEP:  # json read it, but too deep to echo safely: keep its text
        msg = parse_nested(text)
    return msg, why


def parse_json(line: bytes) -> Any:
    """One request line as json.loads reads it (without NaN and Infinity),
    except that what walnode cannot hold is an Unreadable; ValueError if it
    is not JSON."""
    return _decode(line)[0]


def _first_unreadable(value: Any) -> str | None:
    """Why `value` cannot be served: the first Unreadable in it, or TOO_DEEP."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Unreadable):
            return item.why
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth > MAX_DEPTH:
            return TOO_DEEP
        stack.extend((child, depth + 1) for child in item)
    return None


class _Open:
    """An array or object parse_nested is inside; value None past MAX_DEPTH."""

    __slots__ = ("closer", "start", "value", "key")

    def __init__(self, opener: str, start: int, keep: bool) -> None:
        self.closer = "]" if opener == "[" else "}"
        self.start = start
        self.value: list | dict | None = ([] if opener == "[" else {}) if keep else None
        self.key: str | None = None

    def add(self, item: Any) -> None:
        if isinstance(self.value, list):
            self.value.append(item)
        elif self.value is not None:
            self.value[self.key] = item


_WS = re.compile(r"[ \t\n\r]*")  # json's whitespace
# json's own string scanner (C), strict: the same escapes and refusals as json.loads
_scanstring: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")  # ASCII, as json's C
_LITERALS = (("true", True), ("false", False), ("null", None))


def _skip_ws(text: str, pos: int) -> int:
    match = _WS.match(text, pos)  # always matches: the pattern may be empty
    return pos if match is None else match.end()


def _scalar(text: str, pos: int) -> tuple[Any, int]:
    if text.startswith('"', pos):
        return _scanstring(text, pos + 1, True)
    number = _NUMBER.match(text, pos)
    if number is not None:
        integer, frac, exp = number.groups()
        if frac or exp:
            return _float(integer + (frac or "") + (exp or "")), number.end()
        return _integer(integer), number.end()
    for word, value in _LITERALS:
        if text.startswith(word, pos):
            return value, pos + len(word)
    raise ValueError(f"expected a JSON value at character {pos}")


def _member_start(top: _Open, text: str, pos: int) -> int:
    """Where the next value of `top` starts: in an object, after its key and ':'."""
    if top.closer == "]":
        return pos
    if not text.startswith('"', pos):
        raise ValueError(f"expected a key at character {pos}")
    top.key, pos = _scanstring(text, pos + 1, True)
    pos = _skip_ws(text, pos)
    if not text.startswith(":", pos):
        raise ValueError(f"expected ':' at character {pos}")
    return _skip_ws(text, pos + 1)


def _close(stack: list[_Open], text: str, pos: int) -> tuple[Any, int]:
    """The value of the array or object on top of `stack`, which ends at `pos`."""
    done = stack.pop()
    end = pos + 1
    if done.value is not None:
        return done.value, end
    if stack[-1].value is None:  # inside a dropped one: its text is all that counts
        return None, end
    return Unreadable(text[done.start : end], TOO_DEEP), end


def _open(stack: list[_Open], text: str, pos: int, keep: bool) -> tuple[int, bool]:
    """Push the array or object that starts at `pos`: (where its first value
    starts, True), or (where its closer is, False) when it is empty."""
    stack.append(_Open(text[pos], pos, keep))
    pos = _skip_ws(text, pos + 1)
    if text.startswith(stack[-1].closer, pos):
        return pos, False
    return _member_start(stack[-1], text, pos), True


def _after_value(top: _Open, text: str, pos: int) -> tuple[int, bool]:
    """A value in `top` ended at `pos`: (where the next one starts, True)
    after a ',', or (where top's closer is, False)."""
    pos = _skip_ws(text, pos)
    if text.startswith(",", pos):
        return _member_start(top, text, _skip_ws(text, pos + 1)), True
    if not text.startswith(top.closer, pos):
        raise ValueError(f"expected ',' or {top.closer!r} at character {pos}")
    return pos, False


def parse_nested(text: str) -> Any:
    """json.loads(text) as _STRICT_JSON_BIG_INTS reads it, for any depth: a
    loop with a stack instead of recursion. Arrays and objects nested deeper
    than MAX_DEPTH are checked, then kept as one Unreadable each."""
    stack: list[_Open] = []
    pos = _skip_ws(text, 0)
    while True:
        if text.startswith(("[", "{"), pos):
            pos, filled = _open(stack, text, pos, keep=len(stack) < MAX_DEPTH)
            if filled:
                continue
            value, pos = _close(stack, text, pos)
        else:
            value, pos = _scalar(text, pos)
        # a value ended at pos: it joins its container; then ',' or the closer
        while stack:
            stack[-1].add(value)
            pos, more = _after_value(stack[-1], text, pos)
            if more:
                break
            value, pos = _close(stack, text, pos)
        else:
            if _skip_ws(text, pos) != len(text):
                raise ValueError(f"extra data at character {pos}")
            return value


# A placeholder for an Unreadable while json encodes around it; the random
# part keeps it from meeting a client's text.
_RAW_MARK = f"\x00walnode-unreadable-{os.urandom(8).hex()}-"
_raw_texts: list[str] = []


def _mark_unreadable(value: Any) -> str:
    if not isinstance(value, Unreadable):
        raise TypeError(f"{type(value).__name__} is not JSON")
    _raw_texts.append(value.text)
    return f"{_RAW_MARK}{len(_raw_texts) - 1}"


_ENCODER = json.JSONEncoder(default=_mark_unreadable)  # json.dumps's settings otherwise


def dumps(value: Any) -> str:
    """json.dumps(value), with each Unreadable written as the text it was read from."""
    try:
        text = _ENCODER.encode(value)
        for i, raw in enumerate(_raw_texts):
            text = text.replace(json.dumps(f"{_RAW_MARK}{i}"), raw, 1)
        return text
    finally:
        _raw_texts.clear()


def show(value: Any, limit: int = 200) -> str:
    """A value in an error text: its JSON, cut short."""
    text = dumps(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


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
        msg, unreadable = _decode(line)
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

    It accepts only what _decode keeps from orjson (an envelope and a body
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


APPEND_OK = "wal_append_ok"
# json.dumps's layout of a wal_append_ok reply (PROTOCOL.md), field for field,
# after its src and dest: in_reply_to, offset, length, crc, msg_id
APPEND_OK_REST = (
    ', "body": {"type": "wal_append_ok", "in_reply_to": %d, "offset": %d, "length": %d, '
    '"checksum": "%08x", "msg_id": %d}}\n'
)


class ReplyFormatter:
    """Reply lines in json.dumps's layout (PROTOCOL.md)."""

    def __init__(self) -> None:
        self._json_strs: dict[str, str] = {}
        self._append_templates: dict[tuple[str, str], bytes] = {}

    def append_ok_lines(self, acked: list[tuple[Any, list]], msg_id: int) -> bytes:
        """The wal_append_ok lines (each with its newline) of a run of
        appends, each (request, the writer's [offset, length, crc]
        (messages.py)), with the reply msg_ids from `msg_id` on. A request
        is anything with src, dest and msg_id (a peers.Pending)."""
        lines = []
        last_src = last_dest = template = None  # a run's replies mostly share both
        for request, fields in acked:
            src, dest, in_reply_to = request.src, request.dest, request.msg_id
            if type(in_reply_to) is int and type(src) is str and type(dest) is str:
                # The hot path, one bytes % per line: json.dumps costs ~5 us a reply.
                if src != last_src or dest != last_dest:
                    template = self._append_templates.get((src, dest))
                    if template is None:
                        template = self._append_template(src, dest)
                    last_src, last_dest = src, dest
                offset, length, crc = fields
                lines.append(template % (in_reply_to, offset, length, crc, msg_id))
            else:
                text = self.line(src, dest, in_reply_to, APPEND_OK, append_fields(fields), msg_id)
                lines.append((text + "\n").encode())
            msg_id += 1
        return b"".join(lines)

    def _append_template(self, src: str, dest: str) -> bytes:
        if len(self._append_templates) > 10_000:
            self._append_templates.clear()
        # json.dumps of a str is ASCII; a % in it must not be read as a field
        head = f'{{"src": {self.json_str(src)}, "dest": {self.json_str(dest)}'.replace("%", "%%")
        template = self._append_templates[(src, dest)] = (head + APPEND_OK_REST).encode()
        return template

    def line(
        self, src: Any, dest: Any, in_reply_to: Any, typ: str, fields: dict, msg_id: int
    ) -> str:
        body = {"type": typ, "in_reply_to": in_reply_to}
        body.update(fields)
        body["msg_id"] = msg_id
        return dumps({"src": src, "dest": dest, "body": body})  # without the newline

    def json_str(self, text: str) -> str:
        """json.dumps(text), remembered: node and client ids repeat on every reply."""
        encoded = self._json_strs.get(text)
        if encoded is None:
            if len(self._json_strs) > 10_000:
                self._json_strs.clear()
            encoded = self._json_strs[text] = json.dumps(text)
        return encoded


# -- the envelope of a line too long to parse, as far as its first bytes say

# where the envelope's fields are: keys from the top-level object down
_ENVELOPE_PATHS: dict[tuple[str | None, ...], str] = {
    ("src",): "src",
    ("dest",): "dest",
    ("body",): "body",
    ("body", "msg_id"): "msg_id",
}


def overlong_envelope(head: bytes) -> tuple[str | None, str | None, int | None]:
    """(client, node, msg_id) of an over-long line from its first bytes: the
    top-level "src" and "dest" and the body's own "msg_id", found by a JSON
    scan of the head (nesting, strings and escapes as json reads them). None
    for what the head does not say for sure: absent, not a string (an
    integer), inside another object, or cut off by the head's end or a syntax
    error. A key repeated after the head cannot be seen (json takes the last)."""
    try:  # not final: a character cut at the head's end is held back, not refused
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return None, None, None  # not UTF-8, so not JSON: nothing in it is sure
    found: dict[str, Any] = {}
    try:
        _scan_envelope(text, found)
    except ValueError:
        pass  # the head ends (or the line breaks) here: what was read before stands
    src, dest, msg_id = found.get("src"), found.get("dest"), found.get("msg_id")
    return (
        src if isinstance(src, str) else None,
        dest if isinstance(dest, str) else None,
        msg_id if type(msg_id) is int else None,
    )


def _scan_envelope(text: str, found: dict[str, Any]) -> None:
    """Read `text` as one JSON value, keeping only the values at
    _ENVELOPE_PATHS (in `found`, by name); ValueError where it stops being JSON."""
    stack: list[_Open] = []  # keep=False: no value is built
    pos = _skip_ws(text, 0)
    while True:
        name = _ENVELOPE_PATHS.get(tuple(o.key for o in stack)) if len(stack) <= 2 else None
        if name == "body":
            found.pop("msg_id", None)  # a later "body" replaces the earlier one
        if text.startswith(("[", "{"), pos):
            if name is not None:
                found[name] = None  # an array or object: no id
            pos, filled = _open(stack, text, pos, keep=False)
            if filled:
                continue
            stack.pop()
            pos += 1
        else:
            value, pos = _scalar(text, pos)
            if name is not None:  # a number that reaches the head's end may go on past it
                found[name] = value if pos < len(text) else None
        while stack:  # a value ended at pos: then ',' or its container's closer
            pos, more = _after_value(stack[-1], text, pos)
            if more:
                break
            stack.pop()
            pos += 1
        else:
            return
