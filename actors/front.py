"""The front: the only process that speaks JSON; this module is its loop
and routing.

It reads request lines from stdin (through the inbox, actors/inbox.py),
has them parsed and checked (actors/requests.py; the common append line
at once, requests.plain_append), answers what it can
alone (errors, `wal_recover`, `status` with the supervisor's help) and
forwards the rest to the writer or the compactor, many requests per
message; actors/peers.py keeps which peer is up and what each holds.
Replies go out through actors/output.py, whole lines only. One poller
watches stdin, stdout and the sockets, so reading never blocks replies,
and stdin is not read while the reader of stdout is behind. The
supervisor's STOP ends it: drain (read no more, answer what was read) or
now (answer what is in flight with its error). A reader that closes
stdout ends it too: it exits Exit.STDOUT_CLOSED, and the node stops.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Iterable
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import zmq

from actors import messages as m
from actors import sockets
from actors.codes import Code, Exit
from actors.config import FrontConfig, add_process_flags
from actors.front_state import FrontState
from actors.inbox import Inbox, OverlongLine
from actors.jsontext import overlong_envelope
from actors.output import Output, StdoutClosed
from actors.peers import ROUTES, Failure, Peers, Pending
from actors.replies import ReplyFormatter
from actors.requests import (
    BadRequest,
    NotARequest,
    Validators,
    check_request,
    parse_request,
    plain_append,
    recover_reply,
)
from actors.runtime import die_with_parent, ignore_stop_signals, setup_logging
from actors.sockets import Remote

if TYPE_CHECKING:  # actors.leader imports etcd's client, urllib: only a cluster's front
    from actors.leader import LeaderSource

log = setup_logging("front")

READ_CHUNK = 1 << 20
MAX_IN_FLIGHT = 20_000  # stop reading stdin past this many unanswered requests
GC_YOUNG_OBJECTS = 20_000  # allocations between young collections (Python's default: 700)
STOP_NOW_WRITE_WAIT = 1.0  # seconds a stop at once waits for the reader to take the errors
# What a restarted front does not redo for its predecessor: the request may
# have reached its peer already, so it gets error 13 instead.
CHANGES_STATE = frozenset(
    [m.OP_APPEND, m.OP_SNAPSHOT, m.OP_COMPACT, m.OP_SEGMENT_CONFIG, m.OP_FSYNC_BENCHMARK]
)


class Front:
    def __init__(
        self,
        ctx: zmq.Context,
        run_dir: str,
        *,
        max_payload_bytes: int,
        max_line_bytes: int,
        request_timeout: float,
        unavailable_wait: float,
        remote: Remote | None = None,
        leader: LeaderSource | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.ctx = ctx
        self.poller = zmq.Poller()
        self.peers = Peers(
            ctx,
            run_dir,
            remote,
            request_timeout=request_timeout,
            unavailable_wait=unavailable_wait,
            following=leader is not None,
        )
        # a cluster's front: its peers are the leader's (actors/leader.py)
        self.leader = None
        if leader is not None:
            from actors.leader import LeaderWatch

            self.leader = LeaderWatch(ctx, leader)
        self.control = sockets.connect_dealer(ctx, sockets.supervisor_endpoint(run_dir), "front")
        self.validators = Validators(max_payload_bytes)
        self.forwarded = {name: getattr(self.validators, name) for name in ROUTES}
        self.known_types = frozenset([*self.forwarded, "wal_recover", "status"])
        self.state = FrontState(run_dir)
        self.inbox = Inbox(run_dir, max_line_bytes)
        self.init_pending = False  # an init is at the writer; later lines wait for it
        self.after_init: list[tuple[bytes, int, bool]] = []
        self.next_rid = 0
        self.status_waiting: dict[int, Pending] = {}  # rid -> asked of the supervisor
        self.output = Output(1, self.inbox)
        self.replies = ReplyFormatter()
        self.eof = False
        self.stop_mode: str | None = None  # the supervisor's STOP: drain or now
        self._watched: set[int] = set()  # stdin/stdout registered with the poller

    @property
    def node_id(self) -> str | None:
        return self.state.node_id

    # -- replies -----------------------------------------------------------

    def emit(
        self, src: Any, dest: Any, in_reply_to: Any, typ: str, fields: dict, line: int
    ) -> bool:
        """Queue a reply to the request line at `line`; the output marks the
        line answered once the reply goes into the pipe. True: queued."""
        msg_id = self.state.take_msg_id()
        self.output.add(self.replies.line(src, dest, in_reply_to, typ, fields, msg_id), line)
        return True

    def emit_error(
        self, src: Any, dest: Any, in_reply_to: Any, code: int, fields: dict, line: int
    ) -> bool:
        if in_reply_to is None:
            log.warning("not answering a request without msg_id: error %d %s", code, fields)
            return False
        return self.emit(src, dest, in_reply_to, "error", {"code": code, **fields}, line)

    def answer(self, request: Pending, code: int, fields: dict) -> None:
        """Reply to a request the front answers late: a peer's [code, fields]
        (code messages.OK for success), or only mark its line answered if it
        has no msg_id."""
        if code == m.OK:
            replied = request.msg_id is not None and self.emit(
                request.src,
                request.dest,
                request.msg_id,
                request.type + "_ok",
                fields,
                request.line,
            )
        else:
            replied = self.emit_error(
                request.src, request.dest, request.msg_id, code, fields, request.line
            )
        if not replied:
            self.inbox.answered(request.line)

    def answer_appends(self, acked: AckedAppends) -> None:
        """A run of successful appends answered in bulk: one store of the
        acknowledged offset and of the msg_ids, then every line queued at once."""
        if acked.newest >= self.state.acked_next:
            # stored before these acks are printed, and before any kv_get after them
            self.state.store_acked_next(acked.newest + 1)
        requests = acked.requests
        if not requests:
            return
        msg_id = self.state.take_msg_ids(len(requests))
        lines = self.replies.append_ok_lines(requests, acked.offsets, acked.crcs, msg_id)
        self.output.add_lines(lines, list(map(_line_of, requests)))

    def fail(self, failure: Failure) -> None:
        """Answer a request with its error; a failed init frees the lines that waited for it."""
        request = failure.request
        text = {"text": failure.text}
        if not self.emit_error(
            request.src, request.dest, request.msg_id, failure.code, text, request.line
        ):
            self.inbox.answered(request.line)
        if request.type == m.OP_INIT:
            self.init_resolved()

    def flush_output(self) -> None:
        """Write what the pipe takes now; record the lines answered without a reply."""
        self.output.write_ready()
        self.inbox.sync_marks()
        self.inbox.tidy()

    # -- requests ----------------------------------------------------------

    def on_line(self, line: bytes, start: int, inherited: bool = False) -> None:
        """Handle one request line. `inherited`: read by a front that died
        before answering it."""
        if self.init_pending:  # answer nothing before we know whether init took
            self.after_init.append((line, start, inherited))
            return
        try:
            later = self.handle_line(line, start, inherited)
        except Exception:  # a bug must cost one request, never the front (or a replay loop)
            log.exception("could not handle line %r", line[:200])
            later = False
            try:
                request = parse_request(line)
                src = self.node_id if self.node_id is not None else request.node
                text = "walnode failed to handle this request (a bug, logged); it was not applied"
                code = Code.MALFORMED_REQUEST
                later = self.emit_error(
                    src, request.client, request.msg_id, code, {"text": text}, start
                )
            except Exception:
                pass
        if not later:  # no reply will mark it
            self.inbox.answered(start)

    def handle_line(self, line: bytes, start: int, inherited: bool) -> bool:
        """True if the line is answered later: it went on to a peer or the
        supervisor, or its reply is queued (the output marks it)."""
        if type(line) is OverlongLine:
            return self.refuse_overlong(line, start, inherited)
        if line.isspace() or not line:  # a blank line (isspace: no copy, unlike strip)
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
        node_id = self.state.node_id
        src = node_id if node_id is not None else request.node
        msg_id = request.msg_id
        try:
            check_request(request, self.known_types)
        except BadRequest as err:
            return self.emit_error(src, dest, msg_id, err.code, {"text": err.text}, start)
        if inherited and typ in CHANGES_STATE:
            text = (
                f"walnode's front process restarted while this {typ} was in flight: it may "
                f"or may not have been applied; read the log (wal_read/wal_scan/wal_info) "
                f"to find out"
            )
            return self.emit_error(src, dest, msg_id, Code.CRASH, {"text": text}, start)
        try:
            if typ != m.OP_INIT and node_id is None and typ in self.known_types:
                raise BadRequest(
                    Code.TEMPORARILY_UNAVAILABLE, "the node is not initialised yet: send init first"
                )
            if typ == "wal_recover":
                fields = recover_reply(body)
                return msg_id is not None and self.emit(
                    src, dest, msg_id, "wal_recover_ok", fields, start
                )
            if typ == "status":
                rid = self.new_rid()
                status = Pending(src, dest, msg_id, typ, start, deadline=time.monotonic() + 5)
                self.status_waiting[rid] = status
                self.control.send(m.pack([m.STATUS, rid]))
                return True
            arg = self.forwarded[typ](body)  # check_request refused unknown types
        except BadRequest as err:
            return self.emit_error(src, dest, msg_id, err.code, {"text": err.text}, start)
        if typ == m.OP_KV_GET:  # read-your-writes: every acknowledged append first
            arg = [arg, self.state.acked_next]
        if typ == m.OP_INIT:
            self.init_pending = True
        pending = Pending(
            src, dest, msg_id, typ, start, ROUTES[typ], arg if typ == m.OP_INIT else None
        )
        op = m.OP_SYNC if typ == m.OP_SNAPSHOT else typ
        self.forward(self.new_rid(), op, arg, pending)
        return True

    def refuse_overlong(self, head: OverlongLine, start: int, inherited: bool) -> bool:
        """A line over --max-line-bytes, refused as it streams in: error 12
        if its first bytes name a msg_id, else logged and skipped."""
        client, node, msg_id = overlong_envelope(head)
        limit = self.inbox.max_line_bytes
        if msg_id is None:
            if not inherited:
                log.warning(
                    "skipping a line over %d bytes (--max-line-bytes) whose first %d bytes "
                    "name no msg_id: %r",
                    limit,
                    len(head),
                    head[:200],
                )
            return False
        text = (
            f"the request line is longer than {limit} bytes (--max-line-bytes), so it was "
            f"not read; payloads may be at most {self.validators.max_payload_bytes} bytes "
            f"(--max-payload-bytes): split it"
        )
        src = self.node_id if self.node_id is not None else node
        return self.emit_error(src, client, msg_id, Code.MALFORMED_REQUEST, {"text": text}, start)

    def forward(self, rid: int, op: str, arg: Any, request: Pending) -> None:
        failure = self.peers.forward(rid, op, arg, request)
        if failure is not None:
            self.fail(failure)

    def init_resolved(self) -> None:
        """The pending init was answered: handle the lines read meanwhile."""
        self.init_pending = False
        lines, self.after_init = self.after_init, []
        for i, (line, start, inherited) in enumerate(lines):
            if self.init_pending:
                self.after_init.extend(lines[i:])
                return
            self.on_line(line, start, inherited)

    def takes_plain_appends(self) -> bool:
        """A valid append would now be forwarded at once with the node id as
        its reply's src: initialised, no init pending, the writer up."""
        return self.node_id is not None and not self.init_pending and self.peers.takes_appends()

    def new_rid(self) -> int:
        self.next_rid += 1
        return self.next_rid

    # -- peer and supervisor messages ----------------------------------------

    def on_replies(self, msg: list) -> None:
        if msg[0] != m.REPLIES:
            return
        acked = AckedAppends()  # a run of appends' successes, answered in bulk
        answered = self.peers.answered
        ok, run_ok, append = m.OK, m.RUN_OK, m.OP_APPEND
        for rid, code, fields in msg[1]:
            if code == run_ok:
                acked.add_run(self.peers.pending, rid, fields)
                continue
            request = answered(rid)
            if request is None:  # answered already (timeout or a peer's crash)
                continue
            if code == ok and request.type == append:
                request.length = fields[1]  # m.append_ok_fields: [offset, length, crc]
                if request.msg_id is None:  # no reply, but its offset is acknowledged
                    acked.newest = max(acked.newest, fields[0])
                    self.inbox.answered(request.line)
                    continue
                acked.add(request, fields[0], fields[2])
                continue
            if acked:  # replies keep the order the peer gave them
                self.answer_appends(acked)
                acked = AckedAppends()
            self.on_reply(rid, request, code, fields)
        if acked:
            self.answer_appends(acked)

    def on_reply(self, rid: int, request: Pending, code: int, fields: dict) -> None:
        """One reply from a peer, other than an append's success."""
        typ = request.type
        if typ == m.OP_SNAPSHOT and request.peer == "writer" and code == m.OK:
            request.peer = "compactor"  # the barrier passed: now the snapshot itself
            self.forward(rid, m.OP_SNAPSHOT, fields["durable_offset"], request)
            return
        if typ == m.OP_INIT and code == m.OK and request.init_arg is not None:
            self.state.store_node_id(request.init_arg[0])
            request.src = request.init_arg[0]
        if code == Code.TEMPORARILY_UNAVAILABLE and self.leader is not None:
            self.leader.reread()  # as a replica that is not the leader answers
        self.answer(request, code, fields)
        if typ == m.OP_INIT:
            self.init_resolved()

    def on_control(self, msg: list) -> None:
        kind = msg[0]
        if kind == m.PING:  # the supervisor's heartbeat: this loop runs
            self.control.send(m.pack([m.PONG, os.getpid()]))
        elif kind == m.PEER and msg[1] in self.peers.by_name:
            peer = self.peers.by_name[msg[1]]
            if msg[2] == "down":
                self.fail_all(self.peers.down(peer, self.poller))
            else:
                self.fail_all(self.peers.up(peer))
        elif kind == m.STATUS:
            request = self.status_waiting.pop(msg[1], None)
            if request is not None:
                self.answer(request, m.OK, {"node_id": self.node_id, **msg[2]})
        elif kind == m.STOP and self.stop_mode != m.STOP_NOW:
            self.stop_mode = msg[1]
            if self.stop_mode == m.STOP_NOW:
                self.stop_now()

    def stop_now(self) -> None:
        """Answer everything in flight with its error (13 for what a peer
        held, 11 for what was not sent); nothing more is sent."""
        log.warning("stopping at once: answering %d requests in flight", len(self.peers))
        self.fail_all(self.peers.stop_now())
        for request in self.status_waiting.values():
            text = "walnode was stopped at once before the supervisor answered"
            self.fail(Failure(request, Code.TEMPORARILY_UNAVAILABLE, text))
        self.status_waiting.clear()

    def fail_all(self, failures: Iterable[Failure]) -> None:
        for failure in failures:
            self.fail(failure)

    def expire(self, now: float) -> None:
        self.fail_all(self.peers.expired(now))
        for rid, request in list(self.status_waiting.items()):
            if request.deadline <= now:
                del self.status_waiting[rid]
                self.fail(Failure(request, Code.TIMEOUT, "the supervisor did not answer"))

    def idle(self) -> bool:
        return not (self.peers or self.status_waiting or self.after_init)

    # -- the loop ----------------------------------------------------------

    def run(self) -> int:
        """Serve until end of input or the supervisor's STOP; the exit status."""
        try:
            return self.serve()
        except StdoutClosed as err:
            # Logged once, here: a successor would hit the same closed pipe.
            log.warning(
                "the reader of stdout closed it (%s): no reply can be written any more, so "
                "the front reads no more input and walnode stops (what it read and did not "
                "answer may or may not have happened; appends already fsynced stay in the log)",
                err,
            )
            return Exit.STDOUT_CLOSED

    def serve(self) -> int:
        self.control.send(m.pack([m.READY, "front", os.getpid(), None]))
        self.peers.register(self.poller)
        self.poller.register(self.control, zmq.POLLIN)
        if self.leader is not None:
            self.poller.register(self.leader.sock, zmq.POLLIN)
            self.leader.start()
        if self.inbox.unanswered:
            log.warning(
                "answering %d requests a previous front read but did not answer",
                len(self.inbox.unanswered),
            )
        for start, line in self.inbox.unanswered:
            self.on_line(line, start, inherited=True)
        self.peers.send_outboxes()
        self.flush_output()  # what a predecessor left is answered before the first poll
        while True:
            if self.stop_mode == m.STOP_NOW:
                self.output.drain(time.monotonic() + STOP_NOW_WRITE_WAIT)
                self.inbox.sync_marks()
                return Exit.FAILED
            if (self.eof or self.stop_mode == m.STOP_DRAIN) and self.idle() and not self.output:
                self.inbox.sync_marks()
                return Exit.OK  # every request read is answered and written
            events = dict(self.poller.poll(self.watch_stdio()))
            self.on_events(events)
            if 0 in events:
                self.read_stdin()
            self.peers.send_outboxes()
            self.expire(time.monotonic())
            self.flush_output()

    def watch_stdio(self) -> int:
        """Poll stdin only while more input can be answered (back-pressure:
        none while the reader is behind, or while stopping), stdout while
        replies wait for room; the poll's timeout in ms."""
        backlog = len(self.peers) + len(self.after_init)
        self._watch(
            0,
            zmq.POLLIN,
            not self.eof
            and self.stop_mode is None
            and backlog < MAX_IN_FLIGHT
            and not self.output.backed_up(),
        )
        waiting_for_room = self.output.waiting_for_room()
        self._watch(1, zmq.POLLOUT, bool(self.output) and not waiting_for_room)
        return 10 if waiting_for_room else 100

    def _watch(self, fd: int, event: int, want: bool) -> None:
        if want != (fd in self._watched):
            if want:
                self.poller.register(fd, event)
                self._watched.add(fd)
            else:
                self.poller.unregister(fd)
                self._watched.discard(fd)

    def on_events(self, events: dict) -> None:
        if self.control in events:
            for data in sockets.drain(self.control):
                self.on_control(m.unpack(data))
        for peer in self.peers.by_name.values():
            if peer.sock in events:
                for data in sockets.drain(peer.sock):
                    self.on_replies(m.unpack(data))
            if peer.monitor is not None and peer.monitor in events:
                self.fail_all(self.peers.on_monitor(peer, self.poller))
                if self.leader is not None:  # a dropped leader may have been replaced
                    self.leader.reread()
        if self.leader is not None and self.leader.sock in events:
            self.follow_leader()

    def follow_leader(self) -> None:
        """etcd names another leader (or none): move the peers there."""
        assert self.leader is not None
        view = self.leader.changes()
        if view is None:
            return
        remote = None if view.address is None else self.leader.source.remote(view.address)
        how = f"stopped being the cluster's leader (etcd names {view.describe()} now)"
        self.fail_all(self.peers.follow(remote, self.poller, how))

    def read_stdin(self) -> None:
        chunk = self.inbox.take(0, READ_CHUNK)
        if not chunk:
            self.eof = True
        self.on_lines(self.inbox.feed(chunk) if chunk else self.inbox.finish())

    def on_lines(self, lines: list[tuple[int, bytes]]) -> None:
        """Handle request lines in order. A run of plain appends (requests.
        plain_append: the common line, sure to be valid) is forwarded as one:
        no Request, no strict checks, one deadline. Every other line goes
        through on_line, and the run before it is forwarded first, so the
        writer sees the lines' order. Only while nothing would make the
        strict path answer an append otherwise (takes_plain_appends)."""
        run: list[tuple[int, str, int, bytes]] = []  # (line start, client, msg_id, payload)
        limit = self.validators.max_payload_bytes
        plain = self.takes_plain_appends()
        for start, line in lines:
            if plain and (append := plain_append(line, limit)) is not None:
                run.append((start, *append))
                continue
            if run:
                self.forward_appends(run)
                run = []
            self.on_line(line, start)
            plain = self.takes_plain_appends()
        if run:
            self.forward_appends(run)

    def forward_appends(self, run: list[tuple[int, str, int, bytes]]) -> None:
        """Forward a run on_lines gathered while takes_plain_appends (so the
        node id is known, and no line since could change it)."""
        assert self.node_id is not None
        self.next_rid = self.peers.forward_appends(self.next_rid, self.node_id, run)


_line_of = attrgetter("line")


class AckedAppends:
    """Successful appends gathered from a peer's replies, in order, to be
    answered in bulk (Front.answer_appends): each request (with a msg_id)
    beside its offset and checksum, and the newest offset acknowledged
    (also of appends without a msg_id)."""

    __slots__ = ("requests", "offsets", "crcs", "newest")

    def __init__(self) -> None:
        self.requests: list[Pending] = []
        self.offsets: list[int] = []
        self.crcs: list[int] = []
        self.newest = -1

    def __bool__(self) -> bool:
        return self.newest >= 0

    def add(self, request: Pending, offset: int, crc: int) -> None:
        self.requests.append(request)
        self.offsets.append(offset)
        self.crcs.append(crc)
        self.newest = max(self.newest, offset)

    def add_run(self, pending: dict[int, Pending], first_rid: int, fields: list) -> None:
        """A RUN_OK item (messages.py): the requests with rids first_rid on,
        at offsets first_offset on, each still pending (not answered by a
        timeout or a peer's crash meanwhile)."""
        first_offset, packed = fields
        crcs = m.unpack_crcs(packed)
        count = len(crcs)
        pop = pending.pop
        found = [pop(rid, None) for rid in range(first_rid, first_rid + count)]
        if None in found:  # a few were answered already: keep the rest's offsets beside them
            kept = [i for i, request in enumerate(found) if request is not None]
            self.requests += [found[i] for i in kept]  # type: ignore[misc]  # no None
            self.offsets += [first_offset + i for i in kept]
            self.crcs += [crcs[i] for i in kept]
        else:
            self.requests += found  # type: ignore[arg-type]  # no None among them
            self.offsets += range(first_offset, first_offset + count)
            self.crcs += crcs
        self.newest = max(self.newest, first_offset + count - 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="walnode-front")
    add_process_flags(p, data_dir=False)
    FrontConfig.add_flags(p)
    sockets.add_remote_flags(p, "--connect")
    p.add_argument("--cluster", default=None)  # with --coordinator: follow its leader
    p.add_argument("--coordinator", default=None)
    args = p.parse_args(argv)
    config = FrontConfig.from_args(args)
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    ignore_stop_signals()  # the supervisor decides for us
    # Each line allocates a few GC-tracked objects (its pending record, the
    # parsed dicts, lists) that live for one round trip, a few ms: with the
    # default gen0 threshold (700) the collector ran every ~70 lines and
    # walked them again and again (~12% of the front's CPU per append,
    # measured in-process). What start-up made is frozen out of the walk.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_OBJECTS, 10, 10)
    ctx = zmq.Context()
    front = Front(
        ctx,
        args.run_dir,
        max_payload_bytes=config.max_payload_bytes,
        max_line_bytes=config.line_limit,
        request_timeout=config.request_timeout,
        unavailable_wait=config.unavailable_wait,
        remote=sockets.remote_from(args.connect, args),
        leader=leader_source(args),
    )
    return front.run()


def leader_source(args: argparse.Namespace) -> LeaderSource | None:
    if args.cluster is None:
        return None
    from actors.leader import LeaderSource

    keys = None if args.insecure else args.keys
    return LeaderSource(args.cluster, args.coordinator, keys, args.key_name)


if __name__ == "__main__":
    sys.exit(main())
