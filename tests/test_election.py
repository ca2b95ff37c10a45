"""Leader election on a real etcd: one winner, epochs that rise, a lease deadline kept locally."""

from __future__ import annotations

import threading
import time

from wal.replication.election import Election, Leader


def election(server, replica_id: str, ttl: int = 1, margin: float | None = None) -> Election:
    return Election(server.client(), "t", replica_id, f"tcp://127.0.0.1:{ttl}000", ttl, margin)


def wait_until_free(election_: Election, timeout: float = 5) -> float:
    deadline = time.monotonic() + timeout
    while election_.leader() is not None:
        assert time.monotonic() < deadline, "the leader key outlived its lease"
        time.sleep(0.02)
    return time.monotonic()


def test_one_wins_the_second_fails_and_both_see_the_winner(etcd_server):
    first, second = election(etcd_server, "r1"), election(etcd_server, "r2")
    epoch = first.campaign()
    assert epoch is not None and first.is_leader()
    assert second.campaign() is None and not second.is_leader()
    seen = Leader("r1", first.address, epoch, first.lease)
    assert first.leader() == seen and second.leader() == seen
    first.resign()


def test_epoch_rises_after_resign_and_after_lease_expiry(etcd_server):
    first, second = election(etcd_server, "r1"), election(etcd_server, "r2")
    epoch1 = first.campaign()
    first.resign()
    assert not first.is_leader()
    epoch2 = second.campaign()
    assert epoch2 is not None and epoch2 > epoch1
    wait_until_free(second)  # no keep-alive: the 1 s lease runs out
    assert not second.is_leader()
    assert not second.keepalive()  # etcd says the lease is gone
    epoch3 = first.campaign()
    assert epoch3 is not None and epoch3 > epoch2
    first.resign()


def test_stopped_keepalive_loses_leadership_locally_before_the_key_vanishes(etcd_server):
    # A wide margin, so that the check below that etcd still has the key holds on a busy machine.
    leader = election(etcd_server, "r1", ttl=2, margin=0.6)
    started = time.monotonic()
    assert leader.campaign() is not None
    assert leader.lease_deadline <= started + 2 - 0.6 + 0.5  # counted from the grant's send time
    while leader.is_leader():
        time.sleep(0.005)
    lost_locally = time.monotonic()
    assert lost_locally >= leader.lease_deadline
    assert leader.leader() is not None, "etcd still has the key: the lease has not expired"
    gone = wait_until_free(leader)
    assert gone - started >= 2
    assert lost_locally < gone


def test_running_keepalive_holds_leadership_past_the_ttl(etcd_server):
    leader = election(etcd_server, "r1", ttl=1)
    epoch = leader.campaign()
    stop = threading.Event()
    renewer = threading.Thread(target=leader.run_keepalive, args=(stop,))
    renewer.start()
    try:
        time.sleep(2.5)
        assert leader.is_leader()
        assert leader.leader().epoch == epoch
    finally:
        stop.set()
        renewer.join(5)
    leader.resign()
    assert leader.leader() is None
