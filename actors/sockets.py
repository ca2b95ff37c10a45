"""Endpoints and socket options, in one place.

By default every endpoint is an ipc:// socket in the run directory, a
private (0700) directory the supervisor makes for one run.
"""

from __future__ import annotations

import os

import zmq


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
