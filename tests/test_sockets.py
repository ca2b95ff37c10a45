"""actors/sockets.py's receive path for the writer's ROUTER (drain_router):
each message comes out whole and in order, as (identity, data); a message of
more frames than walnode sends is dropped whole, and the ones after it are
still read right (no frame of it is taken for an identity or a message).
Real zmq sockets over ipc in a temporary directory."""

from __future__ import annotations

import time

import zmq

from actors import sockets


def test_drain_router_takes_whole_messages_and_drops_multi_frame_ones(tmp_path):
    ctx = zmq.Context()
    try:
        endpoint = f"ipc://{tmp_path / 'r.sock'}"
        router = sockets.bind_router(ctx, endpoint)
        dealer = sockets.connect_dealer(ctx, endpoint, "front")
        dealer.send(b"first")
        dealer.send_multipart([b"not", b"ours", b"at all"])
        dealer.send(b"second")
        taken: list = []
        deadline = time.monotonic() + 10
        while len(taken) < 2 and time.monotonic() < deadline:
            router.poll(100)
            taken += sockets.drain_router(router, 100)
        assert [(ident, bytes(data)) for ident, data in taken] == [
            (b"front", b"first"),
            (b"front", b"second"),
        ]
        assert sockets.drain_router(router, 100) == []
        sockets.send_to(router, b"front", b"reply")
        assert dealer.poll(10_000) and dealer.recv_multipart() == [b"reply"]
    finally:
        ctx.destroy(linger=0)
