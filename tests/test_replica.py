"""The replicated log with real processes: etcd (tests/etcd.py) and three
`walnode --roles writer,compactor --cluster ...` replicas (tests/cluster.py), each a whole
process tree in its own group, driven over the fronts' internal protocol on --listen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from actors import messages as m
from actors.codes import Code, Exit
from tests.cluster import Cluster, Link
from tests.nodeproc import NODE, walctl
from wal import DataDir, snapshot
from wal.replication import membership
from wal.statemachine import StateMachine
from walctl.localcluster import free_ports

TTL = 2


@pytest.fixture
def cluster(tmp_path, etcd_server):
    c = Cluster(str(tmp_path), etcd_server.endpoint, size=3, ttl=TTL)
    c.start_all()
    yield c
    c.stop_all()


@pytest.fixture
def curve_cluster(tmp_path, etcd_server):
    """The replicas talk to each other (and to us) with CURVE: `walctl keygen`'s keys."""
    keys = str(tmp_path / "keys")
    done = walctl("keygen", keys)
    assert done.returncode == 0, done.stderr
    c = Cluster(str(tmp_path), etcd_server.endpoint, size=3, ttl=TTL, keys=keys)
    c.start_all()
    yield c
    c.stop_all()


def append_all(link: Link, payloads: list[bytes], timeout: float) -> dict[bytes, tuple[int, dict]]:
    """Every payload sent at once (all in flight); the replies that came within `timeout`."""
    rids = {link.send(m.OP_APPEND, p): p for p in payloads}
    replies: dict[int, tuple[int, dict]] = {}
    deadline = time.monotonic() + timeout
    while len(replies) < len(rids) and time.monotonic() < deadline:
        replies.update(link.replies(min(0.2, deadline - time.monotonic())))
    return {rids[rid]: reply for rid, reply in replies.items() if rid in rids}


def committed_payloads(cluster: Cluster, replica) -> dict[int, tuple[str, object]]:  # noqa: ANN001
    """offset -> (payload, epoch_start) of every entry in the replica's data directory."""
    out = {}
    for line in cluster.dump(replica):
        entry = json.loads(line)
        out[entry["offset"]] = (entry["payload"], entry.get("epoch_start"))
    return out


def replication_of(link: Link) -> dict:
    code, info = link.request(m.OP_INFO, None)
    assert code == m.OK, info
    return info["replication"]


def wait_caught_up(link: Link, replica_ids: list[str], timeout: float = 20) -> dict:
    """The leader's `replication` once every replica named is durable up to its commit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = replication_of(link)
        durable = [state["replicas"][rid]["durable_offset"] for rid in replica_ids]
        if min(durable) >= state["commit_offset"]:
            return state
        time.sleep(0.1)
    raise AssertionError(f"{replica_ids} did not catch up: {state}")


def append_each(link: Link, payloads: list[bytes], acked: dict[int, bytes]) -> None:
    for payload in payloads:
        code, fields = link.request(m.OP_APPEND, payload)
        assert code == m.OK, fields
        acked[fields["offset"]] = payload


def append_run(link: Link, payloads: list[bytes], acked: dict[int, bytes]) -> None:
    """A front's wal_append_run (messages.py): the replica answers each of its
    appends alone, by the rids in a row, at offsets in a row."""
    first = link.next_rid + 1
    link.next_rid += len(payloads)
    link.sock.send(m.pack([m.REQUESTS, [[first, m.OP_APPEND_RUN, payloads]]]))
    replies: dict[int, tuple[int, dict]] = {}
    deadline = time.monotonic() + 5
    while len(replies) < len(payloads) and time.monotonic() < deadline:
        replies.update(link.replies(0.2))
    assert sorted(replies) == list(range(first, first + len(payloads))), replies
    offsets = []
    for i, payload in enumerate(payloads):
        code, fields = replies[first + i]
        assert code == m.OK and fields["length"] == len(payload), fields
        offsets.append(fields["offset"])
        acked[fields["offset"]] = payload
    assert offsets == list(range(offsets[0], offsets[0] + len(payloads))), offsets


@pytest.mark.timeout(120)
def test_quorum_commit_failover_and_rejoin(cluster):
    """An append is acknowledged only once a majority has it: with both followers frozen
    (SIGSTOP, 4 s: past the links' heartbeat) nothing is acknowledged, and thawed, everything
    is and both catch up. Killing the leader's whole
    process tree (kill -9) gives a new leader that serves within TTL + 3 s and holds every
    acknowledged entry; the killed replica rejoins as a follower. Then a leader holding entries
    no follower has (both followers killed) is killed too: the two come back and elect one of
    themselves, and the old leader, restarted, cuts that suffix (log matching): in the end every
    committed offset holds the same payload in all three data directories (walctl dump), a
    front's wal_append_run among them. A leader stopped with SIGTERM exits 0 and hands the
    key on at once (it resigns)."""
    first, link = cluster.wait_serving(30)
    acked: dict[int, bytes] = {}
    append_each(link, [b"a%d" % i for i in range(10)], acked)
    append_run(link, [b"run%d" % i + b"x" * i for i in range(7)], acked)
    followers = [r for r in cluster.replicas if r is not first]

    for follower in followers:
        follower.signal(signal.SIGSTOP)
    try:
        rids = {link.send(m.OP_APPEND, b"held%d" % i): b"held%d" % i for i in range(5)}
        # frozen past the links' 3 s heartbeat: their connections are dropped and made anew
        early = link.replies(4.0)
        assert early == {}, f"acknowledged without a majority: {early}"
    finally:
        for follower in followers:
            follower.signal(signal.SIGCONT)
    late = link.replies(5.0)
    assert set(late) == set(rids), f"not acknowledged after the thaw: {late}"
    for rid, (code, fields) in late.items():
        assert code == m.OK, fields
        acked[fields["offset"]] = rids[rid]
    wait_caught_up(link, [f.replica_id for f in followers], timeout=10)
    link.close()

    killed_at = time.monotonic()
    cluster.kill(first)
    second, link = cluster.wait_serving(TTL + 3 + 2, not_id=first.replica_id)
    failover = time.monotonic() - killed_at
    print(f"failover: a new leader acknowledged {failover:.2f} s after the kill")
    assert failover < TTL + 3, f"failover took {failover:.2f} s"
    for offset, payload in acked.items():
        code, fields = link.request(m.OP_READ, offset)
        assert (code, fields.get("payload")) == (m.OK, payload.decode()), (offset, fields)
    append_each(link, [b"b%d" % i for i in range(5)], acked)
    cluster.start(first)  # the killed one rejoins, as a follower
    wait_caught_up(link, [first.replica_id])

    # a suffix only the leader has: its followers are dead when it takes these appends
    others = [r for r in cluster.replicas if r is not second]
    for replica in others:
        cluster.kill(replica)
    doomed = [b"doomed%d" % i for i in range(3)]
    for payload in doomed:
        link.send(m.OP_APPEND, payload)
    assert link.replies(1.0) == {}, "acknowledged by the leader alone"
    link.close()
    cluster.kill(second)
    for replica in others:
        cluster.start(replica)
    third, link = cluster.wait_serving(30, not_id=second.replica_id)
    append_each(link, [b"c%d" % i for i in range(5)], acked)
    cluster.start(second)  # it must cut what it alone had
    state = wait_caught_up(link, [r.replica_id for r in cluster.replicas])
    assert state["leader"] == third.replica_id and state["role"] == "leader"
    commit = state["commit_offset"]
    link.close()
    # a planned stop hands the key on at once: the leader resigns (else its lease, 1.3-2 s)
    assert third.proc is not None
    stopped_at = time.monotonic()
    third.proc.send_signal(signal.SIGTERM)
    assert third.proc.wait(15) == 0
    # asked of etcd, not timed (a bound of 1.2 s failed on a loaded host): a leader that
    # resigned revoked its lease before it exited; one that did not holds the key until the
    # lease runs out, 1.3-2 s after its last keep-alive
    held = cluster.leader()
    assert held is None or held.replica_id != third.replica_id, (
        f"{third.replica_id} exited still holding the leader key: it did not resign"
    )
    _, link = cluster.wait_serving(TTL + 3, not_id=third.replica_id)
    print(f"handover {time.monotonic() - stopped_at:.2f} s")
    link.close()
    cluster.stop_all()  # dump reads the directories at rest
    logs = [committed_payloads(cluster, r) for r in cluster.replicas]
    for offset in range(commit + 1):
        held = [log.get(offset) for log in logs]
        assert held[0] is not None and held.count(held[0]) == 3, (offset, held)
    for offset, payload in acked.items():
        assert logs[0][offset][0] == payload.decode(), offset
    committed = {logs[0][offset][0] for offset in range(commit + 1)}
    assert not committed & {p.decode() for p in doomed}


@pytest.mark.timeout(90)
def test_frozen_leader_neither_acknowledges_nor_reads_after_its_lease(curve_cluster, node_factory):
    """A leader frozen (SIGSTOP) past its lease and thawed (SIGCONT) answers nothing from its
    stale view: the appends it held get 13 (not ok, although the replies that would commit
    them waited in its socket while it was frozen), wal_info and kv_get get 11; the new leader
    has them. (Over CURVE: replicas and clients with walctl keygen's keys; first a plain
    `--roles front --connect` front at the leader appends and reads through it.)"""
    cluster = curve_cluster
    leader, link = cluster.wait_serving(30)
    front = node_factory("--roles", "front", "--connect", leader.address, "--keys", cluster.keys)
    front.init()
    offset = front.call_ok({"type": "wal_append", "payload": "set k=1"})["offset"]
    assert front.call_ok({"type": "wal_read", "offset": offset})["payload"] == "set k=1"
    assert front.call_ok({"type": "kv_get", "key": "k"})["value"] == "1"
    info = front.call_ok({"type": "wal_info"})
    assert info["replication"]["role"] == "leader", info
    assert info["replication"]["commit_offset"] == offset == info["next_offset"] - 1, info
    front.close()
    kv = cluster.link(leader, port_offset=1)
    followers = [r for r in cluster.replicas if r is not leader]
    for follower in followers:
        follower.signal(signal.SIGSTOP)
    payloads = [b"f%d" % i for i in range(5)]
    rids = {link.send(m.OP_APPEND, p): p for p in payloads}
    time.sleep(0.3)  # shipped to the frozen followers' sockets
    leader.signal(signal.SIGSTOP)
    for follower in followers:  # they take the batches and reply into the frozen leader
        follower.signal(signal.SIGCONT)
    try:
        new_leader, new_link = cluster.wait_serving(TTL + 3 + 2, not_id=leader.replica_id)
        stale_read = link.send(m.OP_INFO, None)  # waits in the frozen leader's socket
        stale_kv = kv.send(m.OP_KV_GET, ["k", 0])
    finally:
        leader.signal(signal.SIGCONT)
    replies = link.replies(2.0)
    assert stale_read in replies, replies
    code, fields = replies[stale_read]
    assert code == Code.TEMPORARILY_UNAVAILABLE, f"a stale read was answered: {fields}"
    for rid in rids:
        if rid in replies:
            code, fields = replies[rid]
            assert code == Code.CRASH, f"the thawed old leader acknowledged: {fields}"
    code, fields = kv.replies(2.0)[stale_kv]
    assert code == Code.TEMPORARILY_UNAVAILABLE, f"a stale kv_get was answered: {fields}"
    code, fields = link.request(m.OP_READ, 0)
    assert code == Code.TEMPORARILY_UNAVAILABLE, fields
    assert fields.get("leader") == new_leader.replica_id, fields
    # the held appends were on a majority (the followers had them): the new leader commits them
    code, scan = new_link.request(m.OP_SCAN, [0, 100])
    assert code == m.OK, scan
    found = [e["payload"] for e in scan["entries"]]
    assert [p.decode() for p in payloads] == [p for p in found if p.startswith("f")], found
    for sock in (link, kv, new_link):
        sock.close()


CLUSTER_USAGE = [
    (["--cluster-size", "4"], "--cluster-size must be odd (1, 3, 5 or 7), got 4"),
    (["--acks", "most"], "--acks must be one of quorum, all, got 'most'"),
    (["--fsync", "never"], "--cluster needs --fsync always (got never)"),
    (["--replica-id", ""], "--replica-id must be 1 to 64 letters, digits"),
    (["--cluster", ""], "--cluster must be 1 to 64 letters, digits"),
    (["--replica-id", "r/1"], "--replica-id must be 1 to 64 letters, digits"),
]


@pytest.mark.timeout(60)
def test_cluster_flags_are_checked_before_anything_starts(tmp_path):
    """A replica's flags that cannot work stop walnode with exit 2 saying what to pass."""
    base = [sys.executable, NODE, "--roles", "writer,compactor", "--data-dir", str(tmp_path)]
    replica = ["--listen", "tcp://127.0.0.1:1", "--insecure", "--cluster", "c"]
    replica += ["--coordinator", "http://127.0.0.1:1", "--replica-id", "r1"]
    cases = [(replica + extra, text) for extra, text in CLUSTER_USAGE]
    cases.append((["--cluster", "c"], "--cluster with the writer role needs"))
    cases.append((["--coordinator", "http://x"], "--coordinator is for a replica"))
    for args, text in cases:
        done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == Exit.USAGE, (args, done.stderr)
        assert text in done.stderr and "started" not in done.stderr, (args, done.stderr)


@pytest.mark.timeout(60)
def test_a_replica_started_with_another_cluster_size_exits_2(tmp_path, etcd_server):
    """The cluster's size is recorded once in etcd; a replica that says otherwise stops."""
    membership.register(etcd_server.client(), "c", "r1", "tcp://127.0.0.1:1", 3)
    c = Cluster(str(tmp_path), etcd_server.endpoint, size=5, ttl=TTL)
    replica = c.replicas[1]
    c.start(replica)
    assert replica.proc is not None and replica.proc.wait(30) == Exit.USAGE
    with open(replica.log_path) as log:
        text = log.read()
    assert "has --cluster-size 3 in etcd" in text and "--cluster-size 5" in text, text
    replica.proc = None
    c.stop_all()


@pytest.mark.timeout(120)
def test_a_follower_behind_the_leaders_compaction_gets_its_snapshot_and_state(
    tmp_path, etcd_server
):
    """A follower's replica process killed (its supervisor restarts it; its compactor runs on)
    while the leader snapshots and compacts past it gets the leader's snapshot
    (InstallSnapshot over the real link), then the log after it; its running compactor
    rebuilds the state from that snapshot (the notice says the log starts past what it
    applied) and goes on applying: its own next snapshot holds the state of every
    acknowledged entry below it."""
    c = Cluster(
        str(tmp_path),
        etcd_server.endpoint,
        ttl=TTL,
        extra=("--snapshot-every", "50", "--keep-entries", "0", "--max-segment-bytes", "2048"),
    )
    # r1's log owner starts 1.5 s late, every time: killed, it stays away while the leader
    # compacts past it
    # compacts past it; it is registered first and started once r2 or r3 leads
    follower = c.replicas[0]
    membership.register(c.etcd, c.name, follower.replica_id, follower.address, 3)
    # as a replica that registered from this data directory before (else it refuses to start)
    DataDir(follower.data_dir).update_meta(
        cluster_member=membership.member_mark(c.name, follower.replica_id)
    )
    for replica in c.replicas[1:]:
        c.start(replica)
    try:
        leader, link = c.wait_serving(30)
        c.start(follower, env={"WALNODE_FAULT_WRITER_START_DELAY": "1.5"})
        acked: dict[int, bytes] = {}
        append_each(link, [b"set k%d=a%d" % (i, i) for i in range(10)], acked)
        wait_caught_up(link, [follower.replica_id])
        kv = c.link(follower, port_offset=1)  # its compactor is up: it answers (11, a follower)
        assert kv.request(m.OP_KV_GET, ["k1", 0])[0] == Code.TEMPORARILY_UNAVAILABLE
        os.kill(follower.child_pid("actors.replica"), signal.SIGKILL)
        payloads = [b"set k%d=v%d " % (i % 20, i) + b"." * 40 for i in range(600)]
        replies = append_all(link, payloads, 30)
        assert len(replies) == len(payloads)
        for payload, (code, fields) in replies.items():
            assert code == m.OK, fields
            acked[fields["offset"]] = payload
        burst_end = max(acked) + 1
        wait_caught_up(link, [follower.replica_id])
        append_each(link, [b"set k%d=w%d" % (i % 20, i) for i in range(120)], acked)
        wait_caught_up(link, [follower.replica_id])
        snapshots = DataDir(follower.data_dir, create=False).snapshot_dir
        deadline = time.monotonic() + 5  # its compactor's own automatic snapshot, past the burst
        while max(snapshot.list_offsets(snapshots), default=0) <= burst_end + 50:
            assert time.monotonic() < deadline, snapshot.list_offsets(snapshots)
            time.sleep(0.1)
        kv.close()
        link.close()
    finally:
        c.stop_all()
    with open(follower.log_path) as f:
        text = f.read()
    assert "a snapshot was installed): reloading" in text, text[-3000:]
    snap, _ = snapshot.load_latest(snapshots)
    assert snap is not None and snap.offset > burst_end + 50, snap
    state = StateMachine()
    for offset in sorted(acked):
        if offset < snap.offset:
            state.apply(acked[offset].decode())
    assert snap.state == state.state


@pytest.mark.timeout(60)
def test_a_one_replica_cluster_with_a_local_front_reports_replication_in_status(
    tmp_path, etcd_server, node_factory
):
    """`--cluster-size 1` with all three roles on one host: the replica leads alone (a
    majority of one), the local front's appends are acknowledged, and `status` (the
    supervisor's, from the replica's heartbeat answers) and `wal_info` carry `replication`."""
    port = free_ports(3)
    node = node_factory(
        "--data-dir", str(tmp_path / "d"), "--listen", f"tcp://127.0.0.1:{port}", "--insecure",
        "--cluster", "solo", "--coordinator", etcd_server.endpoint, "--replica-id", "r1",
        "--cluster-size", "1",
    )  # fmt: skip
    node.init()
    deadline = time.monotonic() + 15
    while True:  # until it has won the key and committed its first record
        reply = node.call({"type": "wal_append", "payload": "x"})
        if reply["type"] == "wal_append_ok":
            break
        assert reply["code"] == Code.TEMPORARILY_UNAVAILABLE and time.monotonic() < deadline
        time.sleep(0.1)
    info = node.call_ok({"type": "wal_info"})
    assert info["replication"]["role"] == "leader" and info["replication"]["leader"] == "r1"
    assert info["replication"]["commit_offset"] == reply["offset"]
    deadline = time.monotonic() + 5
    while "replication" not in (status := node.status()):  # its next heartbeat answer
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["replication"]["role"] == "leader", status
    assert status["replication"]["replicas"]["r1"]["lag"] >= 0, status


@pytest.mark.timeout(60)
def test_a_data_directory_of_another_replica_is_refused(tmp_path, etcd_server):
    """A replica started on a data directory another replica registered from exits 2 naming
    both (its log is that replica's history, not this one's)."""
    c = Cluster(str(tmp_path), etcd_server.endpoint, ttl=TTL)
    replica = c.replicas[1]
    DataDir(replica.data_dir).update_meta(cluster_member=membership.member_mark("c", "r9"))
    c.start(replica)
    assert replica.proc is not None and replica.proc.wait(30) == Exit.USAGE
    replica.proc = None
    with open(replica.log_path) as log:
        text = log.read()
    assert "is replica c/r9 (cluster/id), not c/r2" in text, text
    assert membership.members(c.etcd, "c") == {}  # it registered nothing
    c.stop_all()
