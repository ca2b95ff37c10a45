"""walnode's JSON text: a request line read exactly as json.loads reads
it, and values written exactly as json.dumps writes them.

decode_line reads a line (orjson where it cannot differ from json, else
json's strict decoder, and for lines nested past its recursion a loop
parser of the same language); what walnode cannot hold (nesting past
MAX_DEPTH, 1e400, integers past Python's digit limit) is an Unreadable
that keeps its text, so a reply can echo it (dumps). overlong_envelope
reads what it can of a line too long to parse from its first bytes.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

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


def decode_line(line: bytes) -> tuple[Any, str | None]:
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
    return decode_line(line)[0]


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
