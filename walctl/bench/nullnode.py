"""A node that answers without a disk: the benchmark client's own ceiling.

`python -m walctl.bench.nullnode` reads JSON lines on stdin and answers each
at once on stdout, in walnode's reply layout (actors/replies.py), so the
client parses the same bytes it parses from walnode. A wal_append gets a
wal_append_ok with the next offset and nothing is written anywhere; init,
status and wal_info get what the driver needs to start and to verify
(`wal_info.next_offset` = the appends answered). Driving it with the same
closed loop as walnode (`walctl bench`, the "client ceiling" rows) shows
how fast the client alone can go: if walnode's rate is far below it, the
client is not what limits walnode.
"""

from __future__ import annotations

import os
import sys

import orjson

from actors.replies import APPEND_OK_REST
from walctl.bench.appends import PREFIX

READ_CHUNK = 1 << 20
CHECKSUM = 0  # printed as 00000000
# walnode's wal_append_ok line to the benchmark's client, without the newline
APPEND_OK_LINE = ('{"src": "n1", "dest": "c1"' + APPEND_OK_REST).rstrip("\n")


class NullNode:
    def __init__(self) -> None:
        self.next_offset = 0

    def answer_lines(self, lines: list[bytes]) -> bytes:
        """The replies to these complete lines, joined."""
        out = []
        for line in lines:
            if line.startswith(PREFIX):  # the benchmark's own appends: no JSON parse
                end = line.index(b",", len(PREFIX))
                out.append(self.append_ok(int(line[len(PREFIX) : end]), len(line)))
            elif line.strip():
                out.append(self.answer(orjson.loads(line)))
        return ("\n".join(out) + "\n").encode() if out else b""

    def append_ok(self, msg_id: int, length: int) -> str:
        offset = self.next_offset
        self.next_offset += 1
        return APPEND_OK_LINE % (msg_id, offset, length, CHECKSUM, offset)

    def answer(self, msg: dict) -> str:
        body = msg["body"]
        typ = body["type"]
        fields: dict = {}
        if typ == "wal_append":
            fields = {"offset": self.next_offset, "length": len(body["payload"])}
            self.next_offset += 1
        elif typ == "status":
            fields = {"processes": [{"role": "null", "pid": os.getpid()}]}
        elif typ == "wal_info":
            n = self.next_offset
            fields = {"entries": n, "first_offset": 0, "next_offset": n, "fsynced": True}
        reply = {"type": typ + "_ok", "in_reply_to": body.get("msg_id"), **fields}
        envelope = {"src": msg.get("dest"), "dest": msg.get("src"), "body": reply}
        return orjson.dumps(envelope).decode()


def main() -> int:
    node = NullNode()
    partial = b""
    while True:
        chunk = os.read(0, READ_CHUNK)
        if not chunk:
            return 0
        *lines, partial = (partial + chunk).split(b"\n")
        out = memoryview(node.answer_lines(lines))
        while out:
            out = out[os.write(1, out) :]


if __name__ == "__main__":
    sys.exit(main())
