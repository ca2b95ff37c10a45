"""Leader election on etcd: one lease-bound key per cluster, its create revision the epoch.

A replica campaigns by granting a lease and creating `/walnode/NAME/leader` bound to it in one
transaction that succeeds only if the key is absent; the value names the replica and its address.
The key's create_revision is the epoch: etcd's revisions only grow, so every won campaign has a
larger epoch than every earlier one.

The lease deadline: etcd starts a lease's TTL when it handles the grant or keep-alive, which is
after we sent it, so the lease cannot expire before (send time + TTL) on etcd's clock. Locally we
count from the monotonic time we sent the request and stop `margin` earlier, for the rate
difference between the two clocks and for our own scheduling delay: a replica whose keep-alives
fail (or that was frozen) considers itself no longer leader before etcd can hand the key to
another. Winning the key is necessary, not sufficient: the replication core (protocol.py) also
requires that the winner's log is up to date with a majority before it serves.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from wal.replication.etcd import EtcdClient, EtcdError


@dataclass(frozen=True, slots=True)
class Leader:
    """Who holds the leader key, as read from etcd."""

    replica_id: str
    address: str
    epoch: int
    lease: int


def leader_key(cluster: str) -> bytes:
    return f"/walnode/{cluster}/leader".encode()


def default_margin(ttl: float) -> float:
    """A tenth of the TTL, at least 200 ms: clock-rate error plus a late wake-up."""
    return max(0.2, ttl / 10)


class Election:
    """One replica's side of the election in cluster `cluster`."""

    def __init__(
        self,
        client: EtcdClient,
        cluster: str,
        replica_id: str,
        address: str,
        ttl: int,
        margin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.key = leader_key(cluster)
        self.replica_id = replica_id
        self.address = address
        self.ttl = ttl
        self.margin = default_margin(ttl) if margin is None else margin
        if not 0 < self.margin < ttl:
            raise ValueError(f"margin {self.margin} must be in (0, ttl={ttl})")
        self.clock = clock
        self.epoch: int | None = None  # set while we hold the key
        self.lease: int | None = None
        self.lease_deadline = 0.0  # monotonic; leadership ends here unless renewed

    def campaign(self) -> int | None:
        """Try once to become leader: the epoch if this replica now holds the key, else None."""
        sent = self.clock()
        lease, granted = self.client.lease_grant(self.ttl)
        value = json.dumps({"replica_id": self.replica_id, "address": self.address}).encode()
        try:
            created, holder = self.client.create_if_absent(self.key, value, lease)
        except EtcdError:
            self.client.lease_revoke(lease)
            raise
        if not created:
            self.client.lease_revoke(lease)
            return None
        self.lease = lease
        self.epoch = holder.create_revision
        self.lease_deadline = sent + granted - self.margin
        return self.epoch

    def is_leader(self) -> bool:
        """True while this replica holds the key and its local lease deadline is ahead."""
        return self.epoch is not None and self.clock() < self.lease_deadline

    def keepalive(self) -> bool:
        """Renew the lease once; whether this replica is still leader afterwards.

        A failed request leaves the deadline where it was (we may still be leader until then);
        etcd answering that the lease is gone ends leadership at once.
        """
        if self.lease is None:
            return False
        sent = self.clock()
        try:
            remaining = self.client.lease_keepalive(self.lease)
        except EtcdError:
            return self.is_leader()
        if remaining <= 0:
            self._forget()
            return False
        self.lease_deadline = max(self.lease_deadline, sent + remaining - self.margin)
        return self.is_leader()

    def run_keepalive(self, stop: threading.Event) -> None:
        """Renew every TTL/3 until `stop` is set or leadership is lost."""
        while not stop.wait(self.ttl / 3):
            if not self.keepalive():
                return

    def resign(self) -> None:
        """Give up the key now (revoking the lease deletes it), so another can win at once."""
        lease = self.lease
        self._forget()
        if lease is not None:
            self.client.lease_revoke(lease)

    def _forget(self) -> None:
        self.epoch = None
        self.lease = None
        self.lease_deadline = 0.0

    def leader(self) -> Leader | None:
        """The current holder of the key as etcd has it, or None."""
        return read_leader(self.client, self.key)


def read_leader(client: EtcdClient, key: bytes) -> Leader | None:
    """The holder of leader key `key`, or None when nobody holds it (what fronts will watch)."""
    held = client.get(key)
    if held is None:
        return None
    value = json.loads(held.value)
    return Leader(value["replica_id"], value["address"], held.create_revision, held.lease)
