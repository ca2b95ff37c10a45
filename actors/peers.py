"""The front's peers: which of the writer and the compactor are up, and the
in-flight rules for the requests the front forwards to them.

A request sent to an up peer is pending until its reply, its deadline
(`--request-timeout`: error 0, it may have happened) or its peer's death
(error 13: it may have happened). A request for a peer that is down is held,
not sent, for up to `--unavailable-wait` (then error 11: it did not happen).
This module decides those outcomes; the front answers them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import zmq

from actors import messages as m
from actors import sockets
from actors.codes import Code
from actors.sockets import Remote

log = logging.getLogger("front")

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


@dataclass(slots=True)
class Pending:
    """A request the front answers later: forwarded to a peer, or asked of the supervisor."""

    src: Any  # the reply's src (the node id, or the request's dest before init)
    dest: Any  # the reply's dest (the request's src)
    msg_id: int | None  # None: the request gets no reply
    type: str
    line: int  # the request line's start in the stdin stream (its inbox mark)
    peer: str = "supervisor"  # who answers it: writer, compactor or supervisor
    init_arg: list | None = None  # init's [node_id, node_ids], to adopt on success
    deadline: float = 0.0
    length: int = 0  # an append's payload bytes, for its reply (a run's answer omits them)


@dataclass(slots=True)
class Held:
    """A request whose peer is down: not sent, waiting for the peer to come back."""

    rid: int
    op: str
    arg: Any
    request: Pending


@dataclass(slots=True)
class Failure:
    """A request the peer model gave up on, and the error it gets."""

    request: Pending
    code: Code
    text: str


class Peer:
    """A process the front forwards to, and whether it is up.

    A local peer's ups and downs come from the supervisor. A remote one
    (another host, `--connect`) has a monitor socket instead: it is up once
    the (CURVE) handshake succeeds and down when the connection drops."""

    def __init__(
        self,
        name: str,
        ctx: zmq.Context,
        run_dir: str,
        remote: Remote | None,
        *,
        following: bool = False,
    ) -> None:
        self.name = name
        self.ctx = ctx
        self.remote = remote
        # following (a cluster's front, actors/leader.py): the endpoint is the
        # leader's, and there is none while no leader is known
        self.following = following
        self.endpoint: str | None = None
        if remote is not None:
            self.endpoint = getattr(remote, name)
        elif not following:
            self.endpoint = ENDPOINTS[name](run_dir)
        self.monitor: zmq.Socket | None = None
        self.sock = self._connect()
        self.up = remote is None and not following
        self.refused = False  # a handshake failure was logged
        self.outbox: list[list] = []

    def _connect(self) -> zmq.Socket:
        if self.endpoint is None:  # following, no leader known: a socket to nowhere
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            return sock
        if self.remote is None:
            return sockets.connect_dealer(self.ctx, self.endpoint)
        sock, self.monitor = sockets.connect_remote_dealer(self.ctx, self.remote, self.endpoint)
        return sock

    def register(self, poller: zmq.Poller) -> None:
        for sock in (self.sock, self.monitor):
            if sock is not None:
                poller.register(sock, zmq.POLLIN)

    def retarget(self, remote: Remote | None) -> None:
        """Follow a new leader (None: no leader known); reconnect() connects there."""
        self.remote = remote
        self.endpoint = None if remote is None else getattr(remote, self.name)

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
            self.monitor = None
        self.sock.close(linger=0)
        self.sock = self._connect()
        self.register(poller)
        self.outbox = []


class Peers:
    """The writer and the compactor, and every request forwarded to them."""

    def __init__(
        self,
        ctx: zmq.Context,
        run_dir: str,
        remote: Remote | None,
        *,
        request_timeout: float,
        unavailable_wait: float,
        following: bool = False,
    ) -> None:
        self.by_name = {
            name: Peer(name, ctx, run_dir, remote, following=following) for name in ENDPOINTS
        }
        self.request_timeout = request_timeout
        self.unavailable_wait = unavailable_wait
        self.pending: dict[int, Pending] = {}  # rid -> sent, unanswered (oldest first)
        self.held: list[Held] = []  # not sent: the peer is down (oldest first)
        self.refusing = False  # stopping at once: nothing more is sent or held

    def __len__(self) -> int:
        return len(self.pending) + len(self.held)

    def register(self, poller: zmq.Poller) -> None:
        for peer in self.by_name.values():
            peer.register(poller)

    def forward(self, rid: int, op: str, arg: Any, request: Pending) -> Failure | None:
        """Send to the request's peer, or hold it while that peer is down;
        a Failure if walnode is stopping at once (it was not sent)."""
        if self.refusing:
            return Failure(
                request,
                Code.TEMPORARILY_UNAVAILABLE,
                f"walnode is stopping at once; this {request.type} was not applied, so "
                f"retry it once walnode runs again",
            )
        peer = self.by_name[request.peer]
        if peer.up:
            request.deadline = time.monotonic() + self.request_timeout
            self.pending[rid] = request
            peer.outbox.append([rid, op, arg])
        else:
            request.deadline = time.monotonic() + self.unavailable_wait
            self.held.append(Held(rid, op, arg, request))
        return None

    def takes_appends(self) -> bool:
        """forward_appends may be used: the writer is up and nothing is refused."""
        return self.by_name["writer"].up and not self.refusing

    def forward_appends(
        self, last_rid: int, src: str, run: list[tuple[int, str, int, bytes]]
    ) -> int:
        """forward() of a run of wal_appends, each (line start, client,
        msg_id, payload), to an up writer (takes_appends), with rids after
        `last_rid`, as one wal_append_run (messages.py); the last rid used.
        Each append is pending on its own, as forward() makes it: a timeout,
        the writer's death or a stop answers each alone. One deadline serves
        the run: it was read at one time."""
        deadline = time.monotonic() + self.request_timeout
        pending = self.pending
        rid = last_rid
        op = m.OP_APPEND
        payloads = []
        for start, client, msg_id, payload in run:
            rid += 1
            pending[rid] = Pending(
                src, client, msg_id, op, start, "writer", None, deadline, len(payload)
            )
            payloads.append(payload)
        self.by_name["writer"].outbox.append([last_rid + 1, m.OP_APPEND_RUN, payloads])
        return rid

    def answered(self, rid: int) -> Pending | None:
        """The request a reply is for; None if it was answered already
        (timeout or its peer's crash)."""
        return self.pending.pop(rid, None)

    def send_outboxes(self) -> None:
        for peer in self.by_name.values():
            if peer.outbox:
                peer.sock.send(m.pack([m.REQUESTS, peer.outbox]))
                peer.outbox = []

    def up(self, peer: Peer) -> list[Failure]:
        peer.up = True
        mine = [h for h in self.held if h.request.peer == peer.name]
        self.held = [h for h in self.held if h.request.peer != peer.name]
        return [f for h in mine if (f := self.forward(h.rid, h.op, h.arg, h.request))]

    def down(self, peer: Peer, poller: zmq.Poller, how: str | None = None) -> list[Failure]:
        """The peer is gone (or, `how` says, left behind): what it held gets 13."""
        lost = {rid: r for rid, r in self.pending.items() if r.peer == peer.name}
        if peer.up:
            log.warning("%s is down; failing %d requests it held", peer.name, len(lost))
        peer.up = False
        peer.reconnect(poller)
        if how is None:
            how = "died" if peer.remote is None else "was lost (its connection dropped)"
        for rid in lost:
            del self.pending[rid]
        return [
            Failure(
                r,
                Code.CRASH,
                f"the {peer.name} {how} while it held this {r.type}: it may or may not "
                f"have been applied; read the log (wal_read/wal_scan/wal_info) to find out",
            )
            for r in lost.values()
        ]

    def follow(self, remote: Remote | None, poller: zmq.Poller, how: str) -> list[Failure]:
        """Move every peer to a new leader's endpoints (None: no leader known).
        What the old leader held gets 13 (`how` says why); what is held waits
        for the new connection, up to --unavailable-wait."""
        failures: list[Failure] = []
        for peer in self.by_name.values():
            peer.retarget(remote)
            failures += self.down(peer, poller, how)
        return failures

    def on_monitor(self, peer: Peer, poller: zmq.Poller) -> list[Failure]:
        """A remote peer's connection changed (see Peer)."""
        assert peer.monitor is not None  # only a remote peer's monitor is polled
        # here, not at the top: zmq.utils.monitor imports zmq.asyncio, hence
        # asyncio (~20 ms of every front's start), and only a remote peer has one
        from zmq.utils.monitor import recv_monitor_message

        event = recv_monitor_message(peer.monitor)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            log.info("connected to the %s at %s", peer.name, peer.endpoint)
            peer.refused = False
            return self.up(peer)
        if event == zmq.EVENT_DISCONNECTED:
            if peer.up:  # else zmq is retrying a connection that never came up
                return self.down(peer, poller)
        elif not peer.refused:
            peer.refused = True
            log.error(
                "the %s at %s refused the handshake: is this front's public key in its "
                "KEYDIR/clients, and KEYDIR/server.key its key? (zmq event %d)",
                peer.name,
                peer.endpoint,
                event,
            )
        return []

    def expired(self, now: float) -> Iterator[Failure]:
        """Requests past their deadline, oldest first, removed as they are yielded."""
        while self.pending:
            rid, request = next(iter(self.pending.items()))
            if request.deadline > now:
                break
            del self.pending[rid]
            yield Failure(
                request,
                Code.TIMEOUT,
                f"no answer from the {request.peer} within {self.request_timeout:g} s; "
                f"the request may or may not have been applied",
            )
        while self.held and self.held[0].request.deadline <= now:
            yield self._unsent(self.held.pop(0).request)

    def _unsent(self, request: Pending) -> Failure:
        peer = self.by_name[request.peer]
        if peer.refused:
            why = f"refused this front's key (see {peer.endpoint} and KEYDIR/clients there)"
        elif peer.endpoint is None:
            why = "is unavailable (the cluster has no leader in etcd now)"
        else:
            why = "is unavailable (restarting or unreachable)"
        return Failure(
            request,
            Code.TEMPORARILY_UNAVAILABLE,
            f"the {peer.name} {why}; this {request.type} was not sent to it"
            f"{'' if peer.refused else ', so retry it'}",
        )

    def stop_now(self) -> list[Failure]:
        """Stopping at once: what a peer holds may have happened (13), what was
        held did not (11); nothing more is sent."""
        self.refusing = True
        failures = [
            Failure(
                r,
                Code.CRASH,
                f"walnode was stopped at once (a second signal, or --stop-timeout passed) "
                f"while the {r.peer} held this {r.type}: it may or may not have been "
                f"applied; read the log (wal_read/wal_scan/wal_info) to find out",
            )
            for r in self.pending.values()
        ]
        failures += [
            Failure(
                h.request,
                Code.TEMPORARILY_UNAVAILABLE,
                f"walnode was stopped at once before this {h.request.type} was sent to "
                f"the {h.request.peer}; it was not applied, so retry it",
            )
            for h in self.held
        ]
        self.pending.clear()
        self.held.clear()
        return failures
