"""Request lines for differential sessions: well-formed ones, and a library
of adversarial shapes (PROTOCOL.md's every request type with what a fast
path might read differently from json.loads: escapes, raw and invalid UTF-8,
duplicate keys, key orders, number forms, wrong types, nesting, whitespace).

A template is bytes with the token MID where a fresh msg_id goes, so each
use of it is a distinct request; a template with a fixed odd msg_id (1.0,
true, -0) keeps it."""

from __future__ import annotations

import json
from collections.abc import Iterator

MID = b"MID"


def envelope(body: dict, src: object = "c1", dest: object = "n1") -> bytes:
    """A request line as json.dumps writes it (the common client)."""
    return json.dumps({"src": src, "dest": dest, "body": body}).encode() + b"\n"


def compact(body: dict, src: str = "c1", dest: str = "n1") -> bytes:
    """The same without spaces (orjson's and many clients' layout)."""
    line = json.dumps({"src": src, "dest": dest, "body": body}, separators=(",", ":"))
    return line.encode() + b"\n"


def fill(template: bytes, msg_id: int) -> bytes:
    line = template.replace(MID, str(msg_id).encode())
    return line if line.endswith(b"\n") else line + b"\n"


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


APPEND = (
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": %s}}'
)
BODY = b'{"src": "c1", "dest": "n1", "body": {"msg_id": MID, %s}}'

# payload JSON texts: escapes, raw UTF-8, odd but valid strings
PAYLOAD_TEXTS: list[bytes] = [
    b'""',
    b'"set x=1"',
    b'"set x="',
    b'"set =v"',
    b'"del x"',
    b'"del  x"',
    b'"set x=a=b"',
    b'"set  x=1"',
    b'"set x=1 "',
    b'"SET x=1"',
    b'"set\\tx=1"',
    b'"caf\\u00e9"',
    _b('"café"'),
    b'"\\u00E9"',
    b'"\\ud83d\\ude00"',
    _b('"😀"'),
    b'"\\uD83D\\uDE00"',
    b'"a\\/b"',
    b'"a/b"',
    b'"q\\"q"',
    b'"back\\\\slash"',
    b'"\\b\\f\\n\\r\\t"',
    b'"\\u0000nul"',
    b'"\\u001f"',
    b'"\\u007f"',
    _b('"\u2028\u2029"'),
    _b('"\u00a0nbsp"'),
    _b('"\ufeffbom inside"'),
    b'"\\ufeff"',
    _b('"日本語"'),
    b'"\\u65e5\\u672c"',
    _b('"set k\u00e9=v\u00e9"'),
    b'"set \\u006b=\\u0076"',
    b'"ends with backslash \\\\"',
    b'"' + b"x" * 300 + b'"',
]

# lines that are not JSON, or carry no body.type: logged and skipped
NOT_REQUESTS: list[bytes] = [
    b"",
    b" ",
    b"\t",
    b"\r",
    b"not json MID",
    b"{",
    b"}",
    b"[]",
    b"null",
    b"42",
    b'"string"',
    b"{}",
    b'{"src": "c1", "dest": "n1"}',
    b'{"src": "c1", "dest": "n1", "body": null}',
    b'{"src": "c1", "dest": "n1", "body": "wal_info"}',
    b'{"src": "c1", "dest": "n1", "body": ["type", "wal_info"]}',
    b'{"src": "c1", "dest": "n1", "body": {"msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"Type": "wal_info", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"body": {"type": "wal_info", "msg_id": MID}}}',
    b'[{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID}}]',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID}}x',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID}}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID}} {}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID},}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID,}}',
    b"{'src': 'c1', 'dest': 'n1', 'body': {'type': 'wal_info', 'msg_id': MID}}",
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": 0MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": +MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID.}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": .5}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": NaN}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": Infinity}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": -Infinity}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": 0x10}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": True}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID /* c */}}',
    # raw control characters inside strings: strict JSON refuses them
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "a\tb"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "a\x00b"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "a\x1fb"}}',
    b'{"src": "c1\x01", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID}}',
    # invalid escapes
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "\\x41"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "\\u12"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "\\U0001F600"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "\\\'"}}',
    # invalid UTF-8: not JSON text
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "\xff"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "\xc3"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "\xc0\xaf"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "\xe0\x80\xaf"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "\xf4\x90\x80\x80"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "ok"}}\xff',
    b'{"src": "\xfe", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID}}',
    # a form feed or a vertical tab is not JSON whitespace; NBSP is not either
    b'\x0c{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID}}',
    b'{"src": "c1",\x0b"dest": "n1", "body": {"type": "wal_info", "msg_id": MID}}',
    b'\xc2\xa0{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID}}',
    # a BOM: json.loads of a str refuses it
    b'\xef\xbb\xbf{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID}}',
    b'\xef\xbb\xbf{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "bom"}}',
    # two requests on one line (\r is not a line end)
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID}}\r'
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": 1}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID}}\x00',
]

# requests the front answers alone with an error, or serves (wal_recover)
FRONT_ANSWERED: list[bytes] = [
    # msg_id number forms
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": 1.0}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": 1e3}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": 1E3}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": 1e-3}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": -0.0}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": 0.1}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": 1e400}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": 123456789.123456789e10}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": true}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": false}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": "MID"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": ""}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": [MID]}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": {"id": MID}}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": 2.5, "payload": "f"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": true, "payload": "t"}}',
    # type
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_appendx", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "WAL_APPEND", "msg_id": MID, "payload": "u"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": " wal_append", "msg_id": MID, "payload": "s"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append ", "msg_id": MID, "payload": "s"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "__init__", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "__class__", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "max_payload_bytes", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append_ok", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "error", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "init_ok", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_\\u0061ppend", "msg_id": MID, "payload": "esc"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": 7, "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": null, "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": true, "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": ["wal_info"], "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": {"name": "wal_info"}, "msg_id": MID}}',
    # payload wrong types and lone surrogates
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": null}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": 5}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": 5.5}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": true}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": ["a"]}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": {"a": "b"}}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "\\ud800"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "a\\udfffb"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "\\ud83d\\ud83d"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "\\ude00\\ud83d"}}',
    # UTF-8 encoded surrogates (CESU-style): json reads them with surrogatepass
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "\xed\xa0\x80"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "\xed\xa0\xbd\xed\xb8\x80"}}',
    b'{"src": "\\ud800", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID, "offset": 0}}',
    b'{"src": "\xed\xa0\x80", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "p"}}',
    # read, scan: offsets
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID, "offset": null}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID, "offset": -1}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID, "offset": 0.0}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID, "offset": 1e2}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID, "offset": "0"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID, "offset": true}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID, "offset": false}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID, "offset": [0]}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID, "offset": 9223372036854775808}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID, "offset": 18446744073709551616}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID, "offset": 1e400}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_scan", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_scan", "msg_id": MID, "from_offset": 0, "max_entries": 0}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_scan", "msg_id": MID, "from_offset": 0, "max_entries": -5}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_scan", "msg_id": MID, "from_offset": 0, "max_entries": null}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_scan", "msg_id": MID, "from_offset": 0, "max_entries": 1.5}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_scan", "msg_id": MID, "from_offset": "0"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_scan", "msg_id": MID, "from_offset": -1}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_segment_config", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_segment_config", "msg_id": MID, "max_segment_bytes": 0}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_segment_config", "msg_id": MID, "max_segment_bytes": "4096"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_compact", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_compact", "msg_id": MID, "snapshot_at_offset": -3}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "kv_get", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "kv_get", "msg_id": MID, "key": 1}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "kv_get", "msg_id": MID, "key": ["x"]}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "kv_get", "msg_id": MID, "key": "\\udc00"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "fsync_benchmark", "msg_id": MID, "entries": 0}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "fsync_benchmark", "msg_id": MID, "entries": 20001}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "fsync_benchmark", "msg_id": MID, "strategies": []}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "fsync_benchmark", "msg_id": MID, "strategies": "none"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "fsync_benchmark", "msg_id": MID, "strategies": ["fast"]}}',
    # wal_recover: answered by the front alone
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_recover", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_recover", "msg_id": MID, "wal_entries": []}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_recover", "msg_id": MID, "wal_entries": {}}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_recover", "msg_id": MID, "wal_entries": [1]}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_recover", "msg_id": MID, "wal_entries": '
    b'[{"offset": 0, "payload": "set x=1", "checksum": "valid"}, '
    b'{"offset": 1, "payload": "set y=\\u00e9", "checksum": "valid"}, '
    b'{"offset": 2, "payload": "del x", "checksum": "valid"}, '
    b'{"offset": 3, "payload": "set z=", "checksum": "invalid"}, '
    b'{"offset": 4, "payload": "set w=1", "checksum": "valid"}]}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_recover", "msg_id": MID, "wal_entries": '
    b'[{"offset": 0, "payload": "set x=1", "checksum": "VALID"}]}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_recover", "msg_id": MID, "wal_entries": '
    b'[{"offset": 0, "payload": 1, "checksum": "valid"}]}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_recover", "msg_id": MID, "wal_entries": '
    b'[{"payload": "set a=b=c", "checksum": "valid"}, {"payload": "set a\\u0000=1", "checksum": "valid"}]}}',
    # nesting deeper than 100 levels, numbers walnode cannot hold
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID, "x": '
    + b"[" * 101
    + b"]" * 101
    + b"}}",
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "offset": 0, "msg_id": MID, "x": '
    + b"[" * 99
    + b"]" * 99
    + b"}}",
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID, "x": '
    + b'{"a": ' * 120
    + b"1"
    + b"}" * 120
    + b"}}",
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID, "big": '
    + b"9" * 4301
    + b"}}",
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "offset": 1, "msg_id": MID, "big": '
    + b"9" * 4300
    + b"}}",
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID, "f": -1e400}}',
]

# well-formed in unusual ways: they reach the writer or compactor
ODD_BUT_VALID: list[bytes] = [
    # key orders
    b'{"body": {"type": "wal_append", "msg_id": MID, "payload": "order1"}, "src": "c1", "dest": "n1"}',
    b'{"dest": "n1", "body": {"payload": "order2", "msg_id": MID, "type": "wal_append"}, "src": "c1"}',
    b'{"src": "c1", "dest": "n1", "body": {"msg_id": MID, "payload": "order3", "type": "wal_append"}}',
    # duplicate keys: the last one counts (json.loads)
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": 1, "msg_id": MID, "payload": "dup1"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "type": "wal_append", "msg_id": MID, "payload": "dup2"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "a", "payload": "dup3"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": 5, "payload": "dup4"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "dup5", "payload": 5}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": 77}, "body": {"type": "wal_append", "msg_id": MID, "payload": "dup6"}}',
    b'{"src": "x", "src": "c9", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "dup7"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "dup8", "msg_id": null}}',
    # whitespace inside and around
    b'  {"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "ws1"}}  ',
    b'\t{ "src" : "c1" , "dest" : "n1" , "body" : { "type" : "wal_append" , "msg_id" : MID , "payload" : "ws2" } }\t',
    b'{"src":"c1","dest":"n1","body":{"type":"wal_append","msg_id":MID,"payload":"ws3"}}',
    b'{\n"src": "c1"}',  # a newline ends the line: two lines, neither a request
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "crlf"}}\r',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "cr2"}}\r\r',
    b'{\r"src": "c1",\r"dest": "n1",\r"body": {"type": "wal_append", "msg_id": MID, "payload": "cr3"}}',
    # msg_id forms that are integers
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": -0, "payload": "negzero"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": -1, "payload": "neg"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": 0, "payload": "zero"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": 9223372036854775807, "payload": "i63"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": 9223372036854775808, "payload": "p63"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": 18446744073709551615, "payload": "u64"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": 18446744073709551616, "payload": "p64"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": -9223372036854775809, "payload": "n63"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": 123456789012345678901234567890, "payload": "huge"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "offset": 2, "msg_id": '
    + b"7" * 500
    + b"}}",
    # no msg_id (or null): applied, never answered
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "payload": "silent"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": null, "payload": "silent null"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "payload": 5}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "nope"}}',
    # envelope shapes: src/dest missing or not strings (echoed as dest)
    b'{"dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "nosrc"}}',
    b'{"src": "c1", "body": {"type": "wal_append", "msg_id": MID, "payload": "nodest"}}',
    b'{"body": {"type": "wal_append", "msg_id": MID, "payload": "bare"}}',
    b'{"src": 5, "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "intsrc"}}',
    b'{"src": null, "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "nullsrc"}}',
    b'{"src": ["c", 1], "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "listsrc"}}',
    b'{"src": {"id": "c1"}, "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "objsrc"}}',
    b'{"src": "", "dest": "", "body": {"type": "wal_append", "msg_id": MID, "payload": "emptysrc"}}',
    b'{"src": "c\\u00e9", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "escsrc"}}',
    _b(
        '{"src": "cé😀", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "rawsrc"}}'
    ),
    b'{"src": "c\\"1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "quotesrc"}}',
    b'{"src": "c\\/1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "slashsrc"}}',
    b'{"src": "c1", "dest": 1.5, "body": {"type": "wal_append", "msg_id": MID, "payload": "floatdest"}}',
    b'{"src": 1e400, "dest": "n1", "body": {"type": "wal_info", "msg_id": MID}}',
    b'{"src": 1.0, "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "fsrc"}}',
    b'{"src": -0, "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "nzsrc"}}',
    b'{"src": '
    + b"8" * 40
    + b', "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "bigsrc"}}',
    b'{"src": "'
    + b"s" * 2000
    + b'", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "longsrc"}}',
    # extra fields, nested values beside the body's scalars (the slow parse)
    b'{"src": "c1", "dest": "n1", "id": 3, "body": {"type": "wal_append", "msg_id": MID, "payload": "extra1"}}',
    b'{"src": "c1", "dest": "n1", "meta": {"a": [1, 2]}, "body": {"type": "wal_append", "msg_id": MID, "payload": "extra2"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "extra3", "x": {"y": [1e5]}}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "extra4", "in_reply_to": 5}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "extra5", "offset": 99}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "extra6", "f": 1.5}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "extra7", "n": 18446744073709551616}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "extra8", "big": 1e308}}',
    # reads and scans that are valid
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID, "offset": 0}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID, "offset": -0}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID, "offset": 3}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": MID, "offset": 9223372036854775807}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_scan", "msg_id": MID, "from_offset": 0}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_scan", "msg_id": MID, "from_offset": 2, "max_entries": 3}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_scan", "msg_id": MID, "from_offset": 0, "max_entries": 99999999}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_scan", "msg_id": MID, "from_offset": 100000}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_segment_info", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_segment_config", "msg_id": MID, "max_segment_bytes": 63}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_segment_config", "msg_id": MID, "max_segment_bytes": 1073741825}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "status", "msg_id": MID}}',
]

# kv_get: answered by the compactor after every append acknowledged before it
# was read, so a session puts these only where no append is in flight
KV_GETS: list[bytes] = [
    b'{"src": "c1", "dest": "n1", "body": {"type": "kv_get", "msg_id": MID, "key": "x"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "kv_get", "msg_id": MID, "key": "k"}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "kv_get", "msg_id": MID, "key": ""}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "kv_get", "msg_id": MID, "key": "k\\u00e9"}}',
    _b('{"src": "c1", "dest": "n1", "body": {"type": "kv_get", "msg_id": MID, "key": "ké"}}'),
    b'{"src": "c1", "dest": "n1", "body": {"type": "kv_get", "msg_id": MID, "key": "missing"}}',
    b'{"src": "c1", "dest": "n1", "body": {"key": "x", "msg_id": MID, "type": "kv_get"}}',
]


def init_lines(node_id: str = "n1") -> list[bytes]:
    """init shapes: refused ones (error 12), and the one that takes."""
    bad = [
        b'{"src": "c0", "dest": "n1", "body": {"type": "init", "msg_id": MID}}',
        b'{"src": "c0", "dest": "n1", "body": {"type": "init", "msg_id": MID, "node_id": ""}}',
        b'{"src": "c0", "dest": "n1", "body": {"type": "init", "msg_id": MID, "node_id": 1}}',
        b'{"src": "c0", "dest": "n1", "body": {"type": "init", "msg_id": MID, "node_id": null}}',
        b'{"src": "c0", "dest": "n1", "body": {"type": "init", "msg_id": MID, "node_id": "\\ud800"}}',
        b'{"src": "c0", "dest": "n1", "body": {"type": "init", "msg_id": MID, "node_id": "n1", "node_ids": "n1"}}',
        b'{"src": "c0", "dest": "n1", "body": {"type": "init", "msg_id": MID, "node_id": "n1", "node_ids": [1]}}',
        b'{"src": "c0", "dest": "n1", "body": {"type": "init", "msg_id": MID, "node_id": "n1", "node_ids": [""]}}',
        b'{"src": "c0", "dest": "n1", "body": {"type": "init", "msg_id": 1.0, "node_id": "n1"}}',
    ]
    ids = json.dumps([node_id, "n2"]).encode()
    good = (
        b'{"src": "c0", "dest": "n1", "body": {"type": "init", "msg_id": MID, "node_id": %s, '
        b'"node_ids": %s}}' % (json.dumps(node_id).encode(), ids)
    )
    return [*bad, good]


def before_init() -> list[bytes]:
    """Lines sent before init: each one with a msg_id gets error 11 (src: its dest)."""
    return [
        b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": MID, "payload": "early"}}',
        b'{"src": "c1", "dest": "nX", "body": {"type": "wal_info", "msg_id": MID}}',
        b'{"src": "c1", "body": {"type": "wal_read", "msg_id": MID, "offset": 0}}',
        b'{"src": "c1", "dest": 5, "body": {"type": "status", "msg_id": MID}}',
        b'{"src": "c1", "dest": "n1", "body": {"type": "kv_get", "msg_id": MID, "key": "x"}}',
        b'{"src": "c1", "dest": "n1", "body": {"type": "wal_recover", "msg_id": MID, "wal_entries": []}}',
        b'{"src": "c1", "dest": "n1", "body": {"type": "nope", "msg_id": MID}}',
        b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": 1.0, "payload": "x"}}',
        b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "payload": "never answered"}}',
    ]


def payload_limit_lines(limit: int) -> Iterator[bytes]:
    """Payloads at --max-payload-bytes and one over, in bytes and in characters."""
    two = limit // 2
    for text in (
        "a" * limit,  # at the limit
        "a" * (limit + 1),  # one byte over
        "\u00e9" * two + "a" * (limit - 2 * two),  # at the limit in bytes, fewer characters
        "\u00e9" * two + "a" * (limit - 2 * two + 1),  # one byte over
        "\u00e9" * limit,  # at the limit in characters: twice over in bytes
        "a" * (limit - 1) + "\u00e9",  # one character over the byte limit by one byte
        "a" * (limit - 4) + "\U0001f600",  # 4-byte character ending at the limit
        "a" * (limit - 3) + "\U0001f600",  # ... one byte over
    ):
        yield APPEND % json.dumps(text).encode()
        # the same payload written raw (UTF-8) instead of \u escapes
        raw = json.dumps(text, ensure_ascii=False).encode()
        yield APPEND % raw


# Answers that depend on what else is in flight, so a session sends these
# alone in a step: wal_info (its `entries` and `fsynced` count what the writer
# has committed, and how the requests read before it were batched depends on
# timing), wal_sync (its durable offset may cover appends read after it, in
# the same batch), wal_compact's counts (the compactor asks the writer while
# appends stream in), kv_get (read-your-writes covers only acknowledged appends).
LOCKSTEP_ONLY: list[bytes] = [
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_sync", "msg_id": MID}}',
    b'{"src": "\\ud800", "dest": "n1", "body": {"type": "wal_info", "msg_id": MID}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_info", "msg_id": ' + b"7" * 500 + b"}}",
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_compact", "msg_id": MID, "snapshot_at_offset": 0}}',
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_compact", "msg_id": MID, "snapshot_at_offset": 1000000}}',
    *KV_GETS,
]
