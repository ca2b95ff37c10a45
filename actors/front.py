"""The front: the only process that speaks JSON.

It reads request lines from stdin, validates them, answers what it can
alone (errors, `wal_recover`, `status` with the supervisor's help) and
forwards the rest to the writer or the compactor (its peers), many
requests per message. Replies are
printed in the exact layout of PROTOCOL.md. One poller watches stdin and
the sockets, so reading never blocks replies.
"""

from __future__ import annotations

import argparse
import mmap
import os
import signal
import struct
import sys
import time
from typing import Any

import zmq
import zmq.utils.monitor

from actors import messages as m
from actors import sockets
from actors.codes import Code
from actors.config import FrontConfig, add_process_flags
from actors.inbox import Inbox
from actors.requests import (
    BadRequest,
    NotARequest,
    ReplyFormatter,
    Validators,
    check_request,
    parse_request,
    recover_reply,
)
from actors.runtime import die_with_parent, setup_logging
from actors.sockets import Remote
from wal.fsutil import write_all

log = setup_logging("front")

READ_CHUNK = 1 << 20
MAX_IN_FLIGHT = 20_000  # stop reading stdin past this many unanswered requests
# What a restarted front does not redo for its predecessor: the request may
# have reached its peer already, so it gets error 13 instead.
CHANGES_STATE = frozenset(
    [m.OP_APPEND, m.OP_SNAPSHOT, m.OP_COMPACT, m.OP_SEGMENT_CONFIG, m.OP_FSYNC_BENCHMARK]
)


class FrontState:
    """What a restarted front must not forget, in a run-directory file (two
    u64s, mmapped): the next reply msg_id, so ids never repeat, and the
    offset after the newest acknowledged append, so kv_get keeps reading
    its writes. Both are stored before the lines they govern are written."""

    LAYOUT = struct.Struct("<QQ")

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < self.LAYOUT.size:
                os.ftruncate(fd, self.LAYOUT.size)
            self._mm = mmap.mmap(fd, self.LAYOUT.size)
        finally:
            os.close(fd)
        self._next_msg_id, self.acked_next = self.LAYOUT.unpack_from(self._mm)

    def take_msg_id(self) -> int:
        n = self._next_msg_id
        self._next_msg_id = n + 1
        struct.pack_into("<Q", self._mm, 0, n + 1)
        return n

    def store_acked_next(self, acked_next: int) -> None:
        self.acked_next = acked_next
        struct.pack_into("<Q", self._mm, 8, acked_next)


# Which peer serves each forwarded type. wal_snapshot goes to the writer
# first, as a sync barrier (so it covers every append read before it), then
# to the compactor with the durable offset the barrier returned.
ROUTES = {
    m.OP_INIT: "writer",
    m.OP_APPEND: "writer",
    m.OP_READ: "writer",
    m.OP_SCAN: "writer",
    m.OP_INFO: "writer",
    m.OP_SYNC: "writer",
    m.OP_SEGMENT_CONFIG: "writer",
    m.OP_SEGMENT_INFO: "writer",
    m.OP_FSYNC_BENCHMARK: "compactor",  # off the append path
    m.OP_SNAPSHOT: "writer",
    m.OP_KV_GET: "compactor",
    m.OP_COMPACT: "compactor",
}
ENDPOINTS = {"writer": sockets.writer_endpoint, "compactor": sockets.compactor_endpoint}

# pending/held request fields (LINE: the request line's start in the stdin stream)
SRC, DEST, MSG_ID, TYPE, DEADLINE, INIT_ARG, PEER, LINE = range(8)


class Peer:
    """A process the front forwards to, and whether it is up.

    A local peer's ups and downs come from the supervisor. A remote one
    (another host, `--connect`) has a monitor socket instead: it is up once
    the (CURVE) handshake succeeds and down when the connection drops."""

    def __init__(self, name: str, ctx: zmq.Context, run_dir: str, remote: Remote | None) -> None:
        self.name = name
        self.ctx = ctx
        self.remote = remote
        self.endpoint = ENDPOINTS[name](run_dir) if remote is None else getattr(remote, name)
        self.monitor: zmq.Socket | None = None
        self.sock = self._connect()
        self.up = remote is None
        self.refused = False  # a handshake failure was logged
        self.outbox: list[list] = []

    def _connect(self) -> zmq.Socket:
        if self.remote is None:
            return sockets.connect_dealer(self.ctx, self.endpoint)
        sock, self.monitor = sockets.connect_remote_dealer(self.ctx, self.remote, self.endpoint)
        return sock

    def register(self, poller: zmq.Poller) -> None:
        for sock in (self.sock, self.monitor):
            if sock is not None:
                poller.register(sock, zmq.POLLIN)

    def reconnect(self, poller: zmq.Poller) -> None:
        """Drop everything queued for a dead peer so it never reaches its
        successor after we answered 13: a client that reads back, finds
        nothing and retries would otherwise get a duplicate."""
        for sock in (self.sock, self.monitor):
            if sock is not None:
                poller.unregister(sock)
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
        self.sock.close(linger=0)
        self.sock = self._connect()
        self.register(poller)
        self.outbox = []


class Front:
    def __init__(
        self,
        ctx: zmq.Context,
        run_dir: str,
        *,
        max_payload_bytes: int,
        request_timeout: float,
        unavailable_wait: float,
        remote: Remote | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.ctx = ctx
        self.poller = zmq.Poller()
        self.peers = {name: Peer(name, ctx, run_dir, remote) for name in ENDPOINTS}
        self.control = sockets.connect_dealer(ctx, sockets.supervisor_endpoint(run_dir), "front")
        self.validators = Validators(max_payload_bytes)
        self.forwarded = {name: getattr(self.validators, name) for name in ROUTES}
        self.known_types = frozenset([*self.forwarded, "wal_recover", "status"])
        self.request_timeout = request_timeout
        self.unavailable_wait = unavailable_wait
        self.state = FrontState(os.path.join(run_dir, "front.state"))
        self.node_id_path = os.path.join(run_dir, "node_id")
        self.node_id: str | None = None
        if os.path.exists(self.node_id_path):
            with open(self.node_id_path) as f:
                self.node_id = f.read() or None
        self.inbox = Inbox(run_dir)
        self.init_pending = False  # an init is at the writer; later lines wait for it
        self.after_init: list[tuple[bytes, int, bool]] = []
        self.next_rid = 0
        # rid -> [src, dest, msg_id, type, deadline, init arg, peer]: sent, unanswered
        self.pending: dict[int, list] = {}
        # requests whose peer is down, not sent: [rid, op, arg, meta]
        self.held: list[list] = []
        self.status_waiting: dict[int, list] = {}
        self.out: list[str] = []
        self.replies = ReplyFormatter()
        self.eof = False

    # -- replies -----------------------------------------------------------

    def emit(self, src: Any, dest: Any, in_reply_to: Any, typ: str, fields: dict) -> None:
        msg_id = self.state.take_msg_id()
        self.out.append(self.replies.line(src, dest, in_reply_to, typ, fields, msg_id))

    def emit_error(self, src: Any, dest: Any, in_reply_to: Any, code: int, fields: dict) -> None:
        if in_reply_to is None:
            log.warning("not answering a request without msg_id: error %d %s", code, fields)
            return
        self.emit(src, dest, in_reply_to, "error", {"code": code, **fields})

    def flush_output(self) -> None:
        data = ("\n".join(self.out) + "\n").encode() if self.out else b""
        self.out.clear()
        # Marks first: a crash between these two writes loses those replies,
        # never doubles them; nothing else runs between them.
        self.inbox.sync_marks()
        if data:
            write_all(1, data)
        self.inbox.tidy()

    # -- requests ----------------------------------------------------------

    def on_line(self, line: bytes, start: int, inherited: bool = False) -> None:
        """Handle one request line. `inherited`: read by a front that died
        before answering it."""
        if self.init_pending:  # answer nothing before we know whether init took
            self.after_init.append((line, start, inherited))
            return
        try:
            forwarded = self.handle_line(line, start, inherited)
        except Exception:  # a bug must cost one request, never the front (or a replay loop)
            log.exception("could not handle line %r", line[:200])
            forwarded = False
            try:
                request = parse_request(line)
                src = self.node_id if self.node_id is not None else request.node
                text = "walnode failed to handle this request (a bug, logged); it was not applied"
                code = Code.MALFORMED_REQUEST
                self.emit_error(src, request.client, request.msg_id, code, {"text": text})
            except Exception:
                pass
        if not forwarded:
            self.inbox.answered(start)

    def handle_line(self, line: bytes, start: int, inherited: bool) -> bool:
        """True if the line went on to a peer or the supervisor (answered later)."""
        if not line.strip():
            return False
        try:
            request = parse_request(line)
        except NotARequest as skip:
            if not inherited:  # its predecessor logged it
                log.warning("skipping %s: %r", skip, line[:200])
            return False
        typ = request.type
        body = request.body
        dest = request.client
        src = self.node_id if self.node_id is not None else request.node
        msg_id = request.msg_id
        try:
            check_request(request, self.known_types)
        except BadRequest as err:
            self.emit_error(src, dest, msg_id, err.code, {"text": err.text})
            return False
        if inherited and typ in CHANGES_STATE:
            text = (
                f"walnode's front process restarted while this {typ} was in flight: it may "
                f"or may not have been applied; read the log (wal_read/wal_scan/wal_info) "
                f"to find out"
            )
            self.emit_error(src, dest, msg_id, 13, {"text": text})
            return False
        try:
            if typ != m.OP_INIT and self.node_id is None and typ in self.known_types:
                raise BadRequest(11, "the node is not initialised yet: send init first")
            if typ == "wal_recover":
                if msg_id is not None:
                    self.emit(src, dest, msg_id, "wal_recover_ok", recover_reply(body))
                return False
            if typ == "status":
                rid = self.new_rid()
                self.status_waiting[rid] = [src, dest, msg_id, time.monotonic() + 5, start]
                self.control.send(m.pack([m.STATUS, rid]))
                return True
            arg = self.forwarded[typ](body)  # check_request refused unknown types
        except BadRequest as err:
            self.emit_error(src, dest, msg_id, err.code, {"text": err.text})
            return False
        if typ == m.OP_KV_GET:  # read-your-writes: every acknowledged append first
            arg = [arg, self.state.acked_next]
        if typ == m.OP_INIT:
            self.init_pending = True
        meta = [src, dest, msg_id, typ, 0.0, arg if typ == m.OP_INIT else None, ROUTES[typ], start]
        op = m.OP_SYNC if typ == m.OP_SNAPSHOT else typ
        self.forward(self.new_rid(), op, arg, meta)
        return True

    def forward(self, rid: int, op: str, arg: Any, meta: list) -> None:
        """Send to the request's peer, or hold it while that peer is down."""
        peer = self.peers[meta[PEER]]
        if peer.up:
            meta[DEADLINE] = time.monotonic() + self.request_timeout
            self.pending[rid] = meta
            peer.outbox.append([rid, op, arg])
        else:
            meta[DEADLINE] = time.monotonic() + self.unavailable_wait
            self.held.append([rid, op, arg, meta])

    def init_resolved(self) -> None:
        """The pending init was answered: handle the lines read meanwhile."""
        self.init_pending = False
        lines, self.after_init = self.after_init, []
        for i, (line, start, inherited) in enumerate(lines):
            if self.init_pending:
                self.after_init.extend(lines[i:])
                return
            self.on_line(line, start, inherited)

    def new_rid(self) -> int:
        self.next_rid += 1
        return self.next_rid

    # -- peer and supervisor messages ----------------------------------------

    def on_replies(self, msg: list) -> None:
        if msg[0] != m.REPLIES:
            return
        for rid, code, fields in msg[1]:
            meta = self.pending.pop(rid, None)
            if meta is None:  # answered already (timeout or a peer's crash)
                continue
            typ = meta[TYPE]
            if typ == m.OP_SNAPSHOT and meta[PEER] == "writer" and code == m.OK:
                meta[PEER] = "compactor"  # the barrier passed: now the snapshot itself
                self.forward(rid, m.OP_SNAPSHOT, fields["durable_offset"], meta)
                continue
            if typ == m.OP_INIT and code == m.OK:
                self.set_node_id(meta[INIT_ARG][0])
                meta[SRC] = meta[INIT_ARG][0]
            if typ == m.OP_APPEND and code == m.OK and fields["offset"] >= self.state.acked_next:
                # stored before the ack is printed, and before any kv_get below
                self.state.store_acked_next(fields["offset"] + 1)
            if code == m.OK:
                if meta[MSG_ID] is not None:
                    self.emit(meta[SRC], meta[DEST], meta[MSG_ID], typ + "_ok", fields)
            else:
                self.emit_error(meta[SRC], meta[DEST], meta[MSG_ID], code, fields)
            self.inbox.answered(meta[LINE])
            if typ == m.OP_INIT:
                self.init_resolved()

    def set_node_id(self, node_id: str) -> None:
        self.node_id = node_id
        tmp = self.node_id_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(node_id)
        os.replace(tmp, self.node_id_path)

    def on_control(self, msg: list) -> None:
        kind = msg[0]
        if kind == m.PING:  # the supervisor's heartbeat: this loop runs
            self.control.send(m.pack([m.PONG, os.getpid()]))
        elif kind == m.PEER and msg[1] in self.peers:
            peer = self.peers[msg[1]]
            if msg[2] == "down":
                self.on_peer_down(peer)
            else:
                self.on_peer_up(peer)
        elif kind == m.STATUS:
            waiting = self.status_waiting.pop(msg[1], None)
            if waiting is not None:
                src, dest, msg_id, _, start = waiting
                fields = {"node_id": self.node_id, **msg[2]}
                if msg_id is not None:
                    self.emit(src, dest, msg_id, "status_ok", fields)
                self.inbox.answered(start)

    def on_peer_up(self, peer: Peer) -> None:
        peer.up = True
        mine = [item for item in self.held if item[3][PEER] == peer.name]
        self.held = [item for item in self.held if item[3][PEER] != peer.name]
        for rid, op, arg, meta in mine:
            self.forward(rid, op, arg, meta)

    def on_monitor(self, peer: Peer) -> None:
        """A remote peer's connection changed (see Peer)."""
        event = zmq.utils.monitor.recv_monitor_message(peer.monitor)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            log.info("connected to the %s at %s", peer.name, peer.endpoint)
            peer.refused = False
            self.on_peer_up(peer)
        elif event == zmq.EVENT_DISCONNECTED:
            if peer.up:  # else zmq is retrying a connection that never came up
                self.on_peer_down(peer)
        elif not peer.refused:
            peer.refused = True
            log.error(
                "the %s at %s refused the handshake: is this front's public key in its "
                "KEYDIR/clients, and KEYDIR/server.key its key? (zmq event %d)",
                peer.name,
                peer.endpoint,
                event,
            )

    def on_peer_down(self, peer: Peer) -> None:
        lost = {rid: meta for rid, meta in self.pending.items() if meta[PEER] == peer.name}
        if peer.up:
            log.warning("%s is down; failing %d requests it held", peer.name, len(lost))
        peer.up = False
        peer.reconnect(self.poller)
        how = "died" if peer.remote is None else "was lost (its connection dropped)"
        for rid, meta in lost.items():
            del self.pending[rid]
            self.fail(
                meta,
                13,
                f"the {peer.name} {how} while it held this {meta[TYPE]}: it may or may not "
                f"have been applied; read the log (wal_read/wal_scan/wal_info) to find out",
            )

    def fail(self, meta: list, code: int, text: str) -> None:
        """Answer a forwarded request with an error; a failed init frees the
        lines that waited for it."""
        self.emit_error(meta[SRC], meta[DEST], meta[MSG_ID], code, {"text": text})
        self.inbox.answered(meta[LINE])
        if meta[TYPE] == m.OP_INIT:
            self.init_resolved()

    def expire(self, now: float) -> None:
        while self.pending:
            rid, meta = next(iter(self.pending.items()))
            if meta[DEADLINE] > now:
                break
            del self.pending[rid]
            self.fail(
                meta,
                0,
                f"no answer from the {meta[PEER]} within {self.request_timeout:g} s; "
                f"the request may or may not have been applied",
            )
        while self.held and self.held[0][3][DEADLINE] <= now:
            _rid, _op, _arg, meta = self.held.pop(0)
            peer = self.peers[meta[PEER]]
            why = (
                f"refused this front's key (see {peer.endpoint} and KEYDIR/clients there)"
                if peer.refused
                else "is unavailable (restarting or unreachable)"
            )
            self.fail(
                meta,
                11,
                f"the {peer.name} {why}; this {meta[TYPE]} was not sent to it"
                f"{'' if peer.refused else ', so retry it'}",
            )
        for rid, (src, dest, msg_id, deadline, start) in list(self.status_waiting.items()):
            if deadline <= now:
                del self.status_waiting[rid]
                self.emit_error(src, dest, msg_id, 0, {"text": "the supervisor did not answer"})
                self.inbox.answered(start)

    def send_outboxes(self) -> None:
        for peer in self.peers.values():
            if peer.outbox:
                peer.sock.send(m.pack([m.REQUESTS, peer.outbox]))
                peer.outbox = []

    def idle(self) -> bool:
        return not (self.pending or self.held or self.status_waiting or self.after_init)

    # -- the loop ----------------------------------------------------------

    def run(self) -> int:
        self.control.send(m.pack([m.READY, "front", os.getpid(), None]))
        poller = self.poller
        for peer in self.peers.values():
            peer.register(poller)
        poller.register(self.control, zmq.POLLIN)
        if self.inbox.unanswered:
            log.warning(
                "answering %d requests a previous front read but did not answer",
                len(self.inbox.unanswered),
            )
        for start, line in self.inbox.unanswered:
            self.on_line(line, start, inherited=True)
        self.send_outboxes()
        self.flush_output()  # what a predecessor left is answered before the first poll
        stdin_registered = False
        while True:
            backlog = len(self.pending) + len(self.held) + len(self.after_init)
            want_stdin = not self.eof and backlog < MAX_IN_FLIGHT
            if want_stdin != stdin_registered:
                if want_stdin:
                    poller.register(0, zmq.POLLIN)
                else:
                    poller.unregister(0)
                stdin_registered = want_stdin
            if self.eof and self.idle():
                self.flush_output()
                return 0
            events = dict(poller.poll(100))
            if self.control in events:
                for data in sockets.drain(self.control):
                    self.on_control(m.unpack(data))
            for peer in self.peers.values():
                if peer.sock in events:
                    for data in sockets.drain(peer.sock):
                        self.on_replies(m.unpack(data))
                if peer.monitor is not None and peer.monitor in events:
                    self.on_monitor(peer)
            if 0 in events:
                chunk = self.inbox.take(0, READ_CHUNK)
                if not chunk:
                    self.eof = True
                lines = self.inbox.feed(chunk) if chunk else self.inbox.finish()
                for start, line in lines:
                    self.on_line(line, start)
            self.send_outboxes()
            self.expire(time.monotonic())
            self.flush_output()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="walnode-front")
    add_process_flags(p, data_dir=False)
    FrontConfig.add_flags(p)
    sockets.add_remote_flags(p, "--connect")
    args = p.parse_args(argv)
    config = FrontConfig.from_args(args)
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = zmq.Context()
    front = Front(
        ctx,
        args.run_dir,
        max_payload_bytes=config.max_payload_bytes,
        request_timeout=config.request_timeout,
        unavailable_wait=config.unavailable_wait,
        remote=sockets.remote_from(args.connect, args),
    )
    return front.run()


if __name__ == "__main__":
    sys.exit(main())
