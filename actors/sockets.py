"""Endpoints, socket options and keys, in one place.

By default every endpoint is an ipc:// socket in the run directory, a
private (0700) directory the supervisor makes for one run. Across hosts
(docs/DEPLOY.md) the writer and the compactor also listen on tcp, the
writer at the given port and the compactor at the next one, with CURVE:
the key files are zmq.auth's, made by `walctl keygen KEYDIR`:

    KEYDIR/server.key, server.key_secret   the log side's key pair
    KEYDIR/<name>.key, <name>.key_secret   a front's key pair ("client")
    KEYDIR/clients/*.key                   the fronts the log side lets in
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq
import zmq.auth

from actors.codes import Exit

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

SERVER_KEY = "server"
DEFAULT_KEY_NAME = "client"  # a front's key pair in KEYDIR
CLIENTS_DIR = "clients"


@dataclass(frozen=True)
class Remote:
    """How a process reaches across hosts: the writer's tcp endpoint (the
    compactor's is the next port) and CURVE keys, or None under --insecure."""

    endpoint: str
    keys_dir: str | None
    key_name: str = DEFAULT_KEY_NAME

    @property
    def writer(self) -> str:
        return self.endpoint

    @property
    def compactor(self) -> str:
        host, port = parse_tcp(self.endpoint)
        return f"tcp://{host}:{port + 1}"

    @property
    def replication(self) -> str:
        """Where a cluster's replica takes the other replicas' messages (docs/REPLICATION.md)."""
        host, port = parse_tcp(self.endpoint)
        return f"tcp://{host}:{port + 2}"

    def argv(self, flag: str) -> list[str]:
        """The child-process flags that recreate this (flag: --listen or --connect)."""
        if self.keys_dir is None:
            return [flag, self.endpoint, "--insecure"]
        return [flag, self.endpoint, "--keys", self.keys_dir, "--key-name", self.key_name]


def add_remote_flags(p: argparse.ArgumentParser, flag: str) -> None:
    p.add_argument(flag, default=None, metavar="tcp://HOST:PORT")
    p.add_argument("--keys", default=None)
    p.add_argument("--key-name", default=DEFAULT_KEY_NAME)
    p.add_argument("--insecure", action="store_true")


def remote_from(endpoint: str | None, args: argparse.Namespace) -> Remote | None:
    if endpoint is None:
        return None
    return Remote(endpoint, None if args.insecure else args.keys, args.key_name)


def parse_tcp(endpoint: str) -> tuple[str, int]:
    """("HOST", PORT) of tcp://HOST:PORT; ValueError with what to write otherwise."""
    m = re.fullmatch(r"tcp://(.+):([0-9]+)", endpoint)  # ASCII digits: \d takes any script
    if not m or not 0 < int(m.group(2)) < 65535:
        raise ValueError(f"expected tcp://HOST:PORT (PORT and PORT+1 are used), got {endpoint!r}")
    return m.group(1), int(m.group(2))


def key_pair(keys_dir: str, name: str) -> tuple[bytes, bytes]:
    """(public, secret) from KEYDIR/<name>.key_secret."""
    public, secret = zmq.auth.load_certificate(os.path.join(keys_dir, name + ".key_secret"))
    if secret is None:
        raise ValueError(f"{keys_dir}/{name}.key_secret holds no secret key")
    return public, secret


def public_key(keys_dir: str, name: str) -> bytes:
    return zmq.auth.load_certificate(os.path.join(keys_dir, name + ".key"))[0]


def start_authenticator(ctx: zmq.Context, keys_dir: str) -> ThreadAuthenticator:
    """Let in only the fronts whose public keys are in KEYDIR/clients."""
    # here, not at the top: zmq.auth.thread imports asyncio (~20 ms of every
    # process's start), and only a CURVE deployment needs it
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=os.path.join(keys_dir, CLIENTS_DIR))
    return auth


def bind_remote_router(ctx: zmq.Context, remote: Remote, endpoint: str) -> zmq.Socket:
    """The tcp ROUTER a writer or compactor serves remote fronts on; on a bind
    error (address in use, not this host's) the process exits Exit.CANNOT_LISTEN."""
    sock = _common(ctx.socket(zmq.ROUTER))
    if remote.keys_dir:
        public, secret = key_pair(remote.keys_dir, SERVER_KEY)
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_server = True
    _heartbeat(sock)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as err:
        logging.getLogger("sockets").error("cannot listen on %s: %s", endpoint, err)
        raise SystemExit(Exit.CANNOT_LISTEN) from None
    return sock


HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000


def _heartbeat(sock: zmq.Socket) -> None:
    """A silent link (a cable pulled, a host frozen) sends no FIN: ZMTP
    heartbeats make it a disconnect within a few seconds, so the in-flight
    rules (13, then 11) apply to it as to a crash."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)


PEER_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def connect_remote_dealer(
    ctx: zmq.Context, remote: Remote, endpoint: str
) -> tuple[zmq.Socket, zmq.Socket]:
    """A front's tcp DEALER to a writer or compactor on another host, and a
    monitor socket that reports PEER_EVENTS: with no supervisor on that host
    to say so, the connection itself tells when the peer is up (it binds
    only once recovered) and when it went away."""
    sock = _remote_dealer(ctx, remote)
    monitor = sock.get_monitor_socket(PEER_EVENTS)
    sock.connect(endpoint)
    return sock, monitor


def _remote_dealer(ctx: zmq.Context, remote: Remote, identity: str | None = None) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.DEALER))
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity.encode())
    # Back off toward a host that is away, but not so far that a writer back
    # after an outage waits long for us (attempts double from 5 ms to 100 ms).
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 100)
    _heartbeat(sock)
    if remote.keys_dir:
        public, secret = key_pair(remote.keys_dir, remote.key_name)
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = public_key(remote.keys_dir, SERVER_KEY)
    return sock


PEER_SNDHWM = 1000  # messages queued toward one replica; beyond, sends are dropped


def connect_replica(ctx: zmq.Context, remote: Remote, identity: str) -> zmq.Socket:
    """A replica's DEALER to another replica's replication ROUTER (`remote` names that
    replica's --listen, with our keys). Bounded: toward a replica that is down nothing is
    queued (ZMQ_IMMEDIATE), toward a frozen one at most PEER_SNDHWM messages; beyond, the
    protocol's messages are dropped (sent NOBLOCK) and the leader's retransmit tick sends
    again what the replica has not acknowledged (a snapshot first if the log moved on)."""
    sock = _remote_dealer(ctx, remote, identity)
    sock.setsockopt(zmq.SNDHWM, PEER_SNDHWM)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.connect(remote.replication)
    return sock


def writer_endpoint(run_dir: str) -> str:
    return f"ipc://{os.path.join(run_dir, 'writer.sock')}"


def compactor_endpoint(run_dir: str) -> str:
    return f"ipc://{os.path.join(run_dir, 'compactor.sock')}"


def supervisor_endpoint(run_dir: str) -> str:
    return f"ipc://{os.path.join(run_dir, 'supervisor.sock')}"


def _common(sock: zmq.Socket) -> zmq.Socket:
    sock.setsockopt(zmq.LINGER, 0)
    # Flow control is the front's job (it bounds what it has in flight);
    # zmq's default high-water mark of 1000 messages would drop on ROUTER.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    # A restarted peer is back in ~150 ms; zmq's default 100 ms between
    # reconnect attempts would add up to that again (ipc: attempts are cheap).
    sock.setsockopt(zmq.RECONNECT_IVL, 5)
    return sock


def bind_router(ctx: zmq.Context, endpoint: str, *, handover: bool = False) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.ROUTER))
    if handover:
        # A restarted child reconnects with the same identity: let it take over.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.bind(endpoint)
    return sock


def connect_dealer(
    ctx: zmq.Context, endpoint: str, identity: str | None = None, *, lossy: bool = False
) -> zmq.Socket:
    """lossy: for notices that the next one supersedes: a small queue, and
    sends that would block are dropped by the caller (zmq.NOBLOCK)."""
    sock = _common(ctx.socket(zmq.DEALER))
    if lossy:
        sock.setsockopt(zmq.SNDHWM, 16)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity.encode())
    sock.connect(endpoint)
    return sock


def drain(sock: zmq.Socket, limit: int | None = None, *, multipart: bool = False):
    """Every message waiting on `sock` now (up to `limit`), without blocking."""
    recv = sock.recv_multipart if multipart else sock.recv
    n = 0
    while limit is None or n < limit:
        try:
            yield recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        n += 1


def drain_router(sock: zmq.Socket, limit: int) -> list[tuple[bytes, zmq.Frame]]:
    """Every message waiting on a ROUTER now (up to `limit`), as (identity, data)
    pairs: each internal message is one frame (actors/messages.py) behind the
    identity frame the ROUTER adds. Two plain recv calls a message, where
    recv_multipart also asks RCVMORE after each frame (a getsockopt each): about
    1.5 µs a message against 4.5 here. `data` is a zmq.Frame, which msgpack reads
    without a copy. Whether another message waits is asked (ZMQ_EVENTS) rather
    than found by a recv that raises zmq.Again: pyzmq builds that exception with
    an import each time, a few µs on a lone request's path. A message of more
    frames is not ours: dropped, and logged."""
    taken: list[tuple[bytes, zmq.Frame]] = []
    recv = sock.recv
    try:
        while len(taken) < limit:
            ident = recv(zmq.NOBLOCK)
            data = recv(zmq.NOBLOCK, copy=False)
            if data.more:
                while recv(zmq.NOBLOCK, copy=False).more:
                    pass
                logging.getLogger("sockets").error(
                    "dropped a message of more than one frame from %r: not walnode's", ident
                )
            else:
                taken.append((ident, data))
            if not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:  # an int for EVENTS
                break
    except zmq.Again:  # nothing was waiting at all
        pass
    return taken


def send_to(sock: zmq.Socket, ident: bytes, data: bytes) -> None:
    """One frame to the peer `ident` of a ROUTER: two sends, without
    send_multipart's per-frame checks (about 0.7 µs against 2.3)."""
    sock.send(ident, zmq.SNDMORE)
    sock.send(data)
