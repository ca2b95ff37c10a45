"""The internal message schema, in one place. Every message is one msgpack
array whose first element names its kind.

front -> writer (DEALER -> ROUTER), many requests per message:
    [REQUESTS, [[rid, op, arg], ...]]
        rid: the front's request id (int); op: an OP_* name; arg: per op:
        append: payload bytes;  read: offset;  scan: [from, max_entries];
        info/sync/segment_info: None;  segment_config: max_segment_bytes;
        init: [node_id, node_ids]
        wal_append_run: [payload bytes, ...]: a run of appends in one item,
            the front's fast path (front.on_lines); they take the rids
            rid, rid+1, ... in order, and each is answered as one wal_append
writer -> front, one message per group commit:
    [REPLIES, [[rid, code, fields], ...]]
        code 0: ok, `fields` are the reply's fields in protocol order, except
        for wal_append, the hot path, where `fields` is the list
        [offset, length, crc32 as an int] (`append_ok_fields`; the front
        prints the checksum as hex, `append_fields` gives the protocol's
        dict): no map keys to pack and unpack for every append;
        otherwise a PROTOCOL.md error code and `fields` holds "text" (and
        any extra fields such as first_offset/next_offset).
    A wal_append_run is answered in order, entry by entry, by items of two kinds:
        [rid, RUN_OK, [first_offset, crcs]]: the appends with rids rid, rid+1, ...
            succeeded at offsets first_offset, first_offset+1, ..., one per
            checksum in `crcs` (bytes: u32 little-endian each, `pack_crcs`);
            the front knows each payload's length and msg_id, so nothing
            per entry is packed or unpacked but four bytes;
        [rid, code, fields]: the append with that rid failed, as a wal_append
            would (the log refused it, a full disk, ...).
        The writer answers a run with as few RUN_OK items as its failures
        allow (one, without any). A cluster's replica answers a run entry by
        entry instead, as [rid, OK, [offset, length, crc]] per append (it
        releases a run's appends as they commit): the front reads both.

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
writer -> compactor, after a commit that moved anything, at most one per
NOTICE_INTERVAL_S (a later one at the end of the interval says what came
since: a notice per commit would wake the compactor for every lone append);
dropped if the compactor is not keeping up (the next one says the same and more):
    [NOTICE, durable_next, bytes_appended]
a cluster's replica (actors/replica.py) instead, durable_next being its
commit offset + 1 (capped by its durable end):
    [NOTICE, durable_next, bytes_appended, serving_until, first_offset]
        serving_until: the monotonic time its lease ends while it leads, else 0:
        the compactor answers kv_get only before it; first_offset: where the
        log starts (past what the compactor applied after a snapshot install:
        it reloads from that snapshot)

child <-> supervisor (DEALER with identity = role -> ROUTER):
    child -> supervisor:  [READY, role, pid, recovery]     recovery: dict or None
                          [STATUS, rid]                    front asks for status
                          [PONG, pid]                      the answer to a PING
                          [PONG, pid, report]              a replica's: report is
                                                           {"replication": {...}} for status
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

import sys
from array import array
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgpack

from wal import crc_hex

if TYPE_CHECKING:
    import zmq

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
OP_APPEND_RUN = "wal_append_run"  # internal, front -> writer: a run of appends (above)
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
RUN_OK = -1  # a reply item for several appends of a wal_append_run (above)
# a notice costs the compactor ~130 us of CPU (its wake-ups and zmq's), and
# nothing it does needs one sooner: snapshots are due every 100,000 entries
NOTICE_INTERVAL_S = 0.05


def append_ok_fields(offset: int, length: int, crc: int) -> list:
    """A successful append's reply fields as the writer sends them (above)."""
    return [offset, length, crc]


def append_fields(fields: list) -> dict:
    """The protocol's wal_append_ok fields from the writer's list."""
    offset, length, crc = fields
    return {"offset": offset, "length": length, "checksum": crc_hex(crc)}


def pack_crcs(crcs: Iterable[int]) -> bytes:
    """A RUN_OK item's checksums: u32 little-endian each."""
    packed = array("I", crcs)
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()


def unpack_crcs(data: bytes) -> array:
    """A RUN_OK item's checksums as ints (its length is the item's count)."""
    crcs = array("I")
    crcs.frombytes(data)
    if _BIG_ENDIAN:
        crcs.byteswap()
    return crcs


_BIG_ENDIAN = sys.byteorder == "big"
assert array("I").itemsize == 4, "pack_crcs needs a 4-byte unsigned int"

_packer = msgpack.Packer(use_bin_type=True)


def pack(msg: list) -> bytes:
    return _packer.pack(msg)


def unpack(data: bytes | zmq.Frame) -> Any:
    """One message from its bytes, or from the zmq.Frame holding them (no copy)."""
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)


# -- replica <-> replica (docs/REPLICATION.md): each replica's DEALER (identity = its replica id)
# to every other replica's ROUTER at --listen PORT+2. One message is one protocol message of
# wal/replication/protocol.py, as a msgpack array whose first element names it:
#     [PEER_POSITION_REQUEST, epoch, sender]
#     [PEER_POSITION_REPLY, epoch, sender, last_epoch, last_offset]
#     [PEER_APPEND, epoch, sender, prev_offset, prev_epoch, entries, commit_offset]
#         entries: [[offset, epoch, payload bytes or None (an epoch-start record)], ...]
#     [PEER_SNAPSHOT, epoch, sender, last_epoch, last_offset, state, commit_offset]
#     [PEER_APPEND_REPLY, epoch, sender, ok, durable_offset, last_offset]
PEER_POSITION_REQUEST = "pq"
PEER_POSITION_REPLY = "pr"
PEER_APPEND = "ap"
PEER_SNAPSHOT = "sn"
PEER_APPEND_REPLY = "ar"


def pack_peer(message: Any) -> bytes:
    """One protocol message (wal.replication.protocol) as its peer wire form."""
    from wal.replication import protocol as p  # here: only replicas load it (~10 ms)

    if isinstance(message, p.AppendBatch):
        entries = [[e.offset, e.epoch, e.payload] for e in message.entries]
        body: list = [PEER_APPEND, message.epoch, message.sender, message.prev_offset]
        body += [message.prev_epoch, entries, message.commit_offset]
    elif isinstance(message, p.AppendReply):
        body = [PEER_APPEND_REPLY, message.epoch, message.sender, message.ok]
        body += [message.durable_offset, message.last_offset]
    elif isinstance(message, p.PositionRequest):
        body = [PEER_POSITION_REQUEST, message.epoch, message.sender]
    elif isinstance(message, p.PositionReply):
        last = message.last
        body = [PEER_POSITION_REPLY, message.epoch, message.sender, last.epoch, last.offset]
    else:
        snap = message.snapshot
        body = [PEER_SNAPSHOT, message.epoch, message.sender, snap.last.epoch, snap.last.offset]
        body += [snap.state, message.commit_offset]
    return _packer.pack(body)


def unpack_peer(data: bytes) -> Any:
    """The protocol message a peer sent; ValueError if it is not one."""
    from wal.replication import protocol as p  # here: only replicas load it (~10 ms)

    try:
        kind, *f = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
        if kind == PEER_APPEND:
            entries = tuple(p.Entry(o, e, payload) for o, e, payload in f[4])
            return p.AppendBatch(f[0], f[1], f[2], f[3], entries, f[5])
        if kind == PEER_APPEND_REPLY:
            return p.AppendReply(f[0], f[1], bool(f[2]), f[3], f[4])
        if kind == PEER_POSITION_REQUEST:
            return p.PositionRequest(f[0], f[1])
        if kind == PEER_POSITION_REPLY:
            return p.PositionReply(f[0], f[1], p.Position(f[2], f[3]))
        if kind == PEER_SNAPSHOT:
            snapshot = p.Snapshot(p.Position(f[2], f[3]), f[4])
            return p.InstallSnapshot(f[0], f[1], snapshot, f[5])
    except (ValueError, TypeError, IndexError, msgpack.UnpackException) as err:
        raise ValueError(f"not a peer message: {err}") from None
    raise ValueError(f"not a peer message: kind {kind!r}")
