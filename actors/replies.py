"""Reply lines in the exact layout of PROTOCOL.md (json.dumps's), without
json.dumps on the hot path: a run of wal_append_ok is printed from one
template per (src, dest)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from actors.jsontext import dumps
from actors.messages import append_fields

APPEND_OK = "wal_append_ok"
# json.dumps's layout of a wal_append_ok reply (PROTOCOL.md), field for field,
# after its src and dest: in_reply_to, offset, length, crc, msg_id
APPEND_OK_REST = (
    ', "body": {"type": "wal_append_ok", "in_reply_to": %d, "offset": %d, "length": %d, '
    '"checksum": "%08x", "msg_id": %d}}\n'
)


_NOTHING = object()  # equal to no src or dest


class ReplyFormatter:
    """Reply lines in json.dumps's layout (PROTOCOL.md)."""

    def __init__(self) -> None:
        self._json_strs: dict[str, str] = {}
        self._append_templates: dict[tuple[str, str], bytes] = {}

    def append_ok_lines(
        self, requests: Sequence[Any], offsets: Sequence[int], crcs: Sequence[int], msg_id: int
    ) -> bytes:
        """The wal_append_ok lines (each with its newline) of a run of
        appends: each request beside its offset and CRC, with the reply
        msg_ids from `msg_id` on. A request is anything with src, dest,
        msg_id and length (its payload's bytes): a peers.Pending."""
        lines = []
        # a run's replies mostly share src and dest; the last ones a template
        # was made for are strs (a JSON value equal to a str is one)
        last_src: object = _NOTHING
        last_dest: object = _NOTHING
        template = b""
        replies = range(msg_id, msg_id + len(requests))
        for request, offset, crc, reply_id in zip(requests, offsets, crcs, replies, strict=True):
            in_reply_to = request.msg_id
            if type(in_reply_to) is int:
                src, dest = request.src, request.dest
                if src == last_src and dest == last_dest:
                    # The hot path, one bytes % per line: json.dumps costs ~5 us a reply.
                    lines.append(template % (in_reply_to, offset, request.length, crc, reply_id))
                    continue
                if type(src) is str and type(dest) is str:
                    known = self._append_templates.get((src, dest))
                    template = known if known is not None else self._append_template(src, dest)
                    last_src, last_dest = src, dest
                    lines.append(template % (in_reply_to, offset, request.length, crc, reply_id))
                    continue
            fields = append_fields([offset, request.length, crc])
            text = self.line(request.src, request.dest, in_reply_to, APPEND_OK, fields, reply_id)
            lines.append((text + "\n").encode())
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
