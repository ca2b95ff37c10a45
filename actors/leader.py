"""A cluster's front follows the leader (`--roles front --cluster NAME --coordinator URL`).

The leader is whoever holds `/walnode/NAME/leader` in etcd (wal/replication/election.py), whose
value names the replica and its `--listen` endpoint (writer at PORT, compactor at PORT+1). A
thread reads the key every POLL_INTERVAL, and at once when the front asks (a peer's connection
dropped, or a replica answered 11, as one that is not the leader does), and tells the front's
loop over an inproc socket when the leader's address changed; the loop never waits for etcd.
The front then moves its peers there (actors/peers.py `Peers.follow`): what the old leader held
gets 13, what arrives meanwhile waits up to `--unavailable-wait` for the new connection, then 11.
etcd unreachable is no change: the leader's own lease decides whether it still serves.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass

import msgpack
import zmq

from actors.sockets import Remote, parse_tcp
from wal.replication.election import Leader, leader_key, read_leader
from wal.replication.etcd import EtcdClient, EtcdError

log = logging.getLogger("front")

POLL_INTERVAL = 0.15  # seconds between reads of the leader key
ETCD_TIMEOUT = 0.5  # one read's timeout; the thread waits, never the front's loop
_watch_ids = itertools.count()


@dataclass(frozen=True)
class LeaderSource:
    """Where a cluster's front finds its log side: the leader key of `cluster` in etcd at
    `coordinator`, reached with the CURVE keys in `keys_dir` (None: --insecure)."""

    cluster: str
    coordinator: str
    keys_dir: str | None
    key_name: str

    def argv(self) -> list[str]:
        """The front process's flags that recreate this."""
        auth = ["--insecure"] if self.keys_dir is None else ["--keys", self.keys_dir]
        auth += ["--key-name", self.key_name]
        return ["--cluster", self.cluster, "--coordinator", self.coordinator, *auth]

    def remote(self, address: str) -> Remote:
        return Remote(address, self.keys_dir, self.key_name)


@dataclass(frozen=True)
class LeaderView:
    """The leader as the front last heard of it; None fields: no leader in etcd."""

    replica_id: str | None
    address: str | None
    epoch: int | None

    def describe(self) -> str:
        if self.address is None:
            return "no leader"
        return f"replica {self.replica_id} at {self.address} (epoch {self.epoch})"


NO_LEADER = LeaderView(None, None, None)


def view_of(leader: Leader | None) -> LeaderView:
    """A usable view of the key: a value that names no tcp endpoint is no leader (logged)."""
    if leader is None:
        return NO_LEADER
    try:
        parse_tcp(leader.address)
    except ValueError as err:
        log.error("the leader key names replica %s at an unusable address: %s", leader, err)
        return NO_LEADER
    return LeaderView(leader.replica_id, leader.address, leader.epoch)


class LeaderWatch:
    """The thread that reads the leader key, and the front's end of its socket."""

    def __init__(
        self, ctx: zmq.Context, source: LeaderSource, interval: float = POLL_INTERVAL
    ) -> None:
        self.source = source
        self.interval = interval
        self.client = EtcdClient(source.coordinator, timeout=ETCD_TIMEOUT)
        self.key = leader_key(source.cluster)
        endpoint = f"inproc://leader-watch-{next(_watch_ids)}"
        self.sock = ctx.socket(zmq.PAIR)  # the front's end: changes in, re-read requests out
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self._thread_sock = ctx.socket(zmq.PAIR)
        self._thread_sock.setsockopt(zmq.LINGER, 0)
        self._thread_sock.connect(endpoint)
        self.view = NO_LEADER  # what the front follows now
        self._thread = threading.Thread(target=self._run, name="leader-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def reread(self) -> None:
        """Ask for a read of the key now (a hint that the leader may have changed)."""
        try:
            self.sock.send(b"", zmq.NOBLOCK)
        except zmq.Again:  # a request is queued already
            pass

    def changes(self) -> LeaderView | None:
        """The newest view the thread sent, if it differs from the one followed; None if not."""
        newest = None
        while True:
            try:
                newest = LeaderView(*msgpack.unpackb(self.sock.recv(zmq.NOBLOCK)))
            except zmq.Again:
                break
        if newest is None or newest.address == self.view.address:
            if newest is not None:
                self.view = newest  # same replica, another epoch: the connection stays
            return None
        self.view = newest
        return newest

    # -- the thread ------------------------------------------------------------

    def _run(self) -> None:
        sock = self._thread_sock
        sent: LeaderView | None = None
        unreachable = False
        while True:
            if sock.poll(int(self.interval * 1000)):
                while sock.poll(0):  # a burst of hints is one read
                    sock.recv()
            try:
                view = view_of(read_leader(self.client, self.key))
            except EtcdError as err:
                if not unreachable:
                    log.error("cannot read the cluster's leader (keeping %s): %s", sent, err)
                unreachable = True
                continue
            except (ValueError, KeyError, TypeError) as err:
                log.error("the leader key of %s holds no leader: %s", self.source.cluster, err)
                view = NO_LEADER
            unreachable = False
            if view != sent:
                sock.send(msgpack.packb([view.replica_id, view.address, view.epoch]))
                sent = view
                log.info("the cluster's leader is %s", view.describe())  # once sent
