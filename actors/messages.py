"""The internal message schema, in one place. Every message is one msgpack
array whose first element names its kind.

front -> writer (DEALER -> ROUTER), many requests per message:
    [REQUESTS, [[rid, op, arg], ...]]
        rid: the front's request id (int); op: an OP_* name; arg: per op:
        append: payload bytes;  read: offset;  scan: [from, max_entries];
        info/sync/segment_info: None;  segment_config: max_segment_bytes;
        init: [node_id, node_ids]
writer -> front, one message per group commit:
    [REPLIES, [[rid, code, fields], ...]]
        code 0: ok, `fields` are the reply's fields in protocol order;
        otherwise a PROTOCOL.md error code and `fields` holds "text" (and
        any extra fields such as first_offset/next_offset).

front -> compactor: [REQUESTS, ...] as above, with ops
        kv_get: [key, min_offset]   (min_offset: the front's acknowledged next
                                     offset, for read-your-writes)
        wal_snapshot: durable_offset (from a wal_sync barrier at the writer)
        wal_compact: offset
        fsync_benchmark: [entries, [strategy, ...]]
compactor -> writer: [REQUESTS, ...] with ops wal_sync and
        truncate_before: [offset, refusal, whole_segments]
            refusal: [22, fields] when no snapshot covers offset, else None
                (the writer answers it unless offset <= first);
            whole_segments: True for automatic retention (the offset moves
                down to its segment's start, nothing is copied), False for
                wal_compact (exactly below offset)
writer -> compactor, after each commit that moved anything (dropped if the
compactor is not keeping up; the next one says the same and more):
    [NOTICE, durable_next, bytes_appended]

child <-> supervisor (DEALER with identity = role -> ROUTER):
    child -> supervisor:  [READY, role, pid, recovery]     recovery: dict or None
                          [STATUS, rid]                    front asks for status
                          [PONG, pid]                      the answer to a PING
    supervisor -> child:  [STATUS, rid, status_dict]
                          [PEER, role, state]              "ready" or "down"
                          [PING]                           heartbeat: answer from the loop
                          [STOP]                           finish and exit 0
                          [STOP, mode]                     to the front: STOP_DRAIN (read
                                                           no more, answer what was read,
                                                           exit 0) or STOP_NOW (answer what
                                                           is in flight with its error now)
"""

from __future__ import annotations

from typing import Any

import msgpack

REQUESTS = "req"
REPLIES = "rep"
READY = "ready"
STATUS = "status"
PEER = "peer"
STOP = "stop"
STOP_DRAIN = "drain"
STOP_NOW = "now"
PING = "ping"
PONG = "pong"
NOTICE = "notice"

OP_INIT = "init"
OP_APPEND = "wal_append"
OP_READ = "wal_read"
OP_SCAN = "wal_scan"
OP_INFO = "wal_info"
OP_SYNC = "wal_sync"
OP_SEGMENT_CONFIG = "wal_segment_config"
OP_SEGMENT_INFO = "wal_segment_info"
OP_FSYNC_BENCHMARK = "fsync_benchmark"
# internal, compactor -> writer: [offset, refusal or None, whole segments only]
OP_TRUNCATE = "truncate_before"
OP_KV_GET = "kv_get"
OP_SNAPSHOT = "wal_snapshot"
OP_COMPACT = "wal_compact"

OK = 0

_packer = msgpack.Packer(use_bin_type=True)


def pack(msg: list) -> bytes:
    return _packer.pack(msg)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
