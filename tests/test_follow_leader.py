"""A cluster's front follows the leader etcd names (actors/leader.py).

Real processes and a real etcd: two ordinary log sides (`--roles writer,compactor --listen`)
stand in for replicas, and the test moves `/walnode/NAME/leader` between them by hand as an
election would. The front (`--roles front --cluster NAME --coordinator URL`) must send to the one
the key names, answer 13 for what the old one held, hold new requests while no leader is known
and answer 11 after --unavailable-wait.
"""

from __future__ import annotations

import json
import os
import signal
import time

from tests.nodeproc import wait_until
from tests.test_distributed import LogSide, log_side_factory  # noqa: F401 (a fixture)
from wal.replication.election import leader_key

CLUSTER = "c1"
NODE_IDS = ["n1"]


class LeaderKey:
    """The leader key, written by hand: a lease-bound create, as a replica's campaign does."""

    def __init__(self, client) -> None:  # noqa: ANN001
        self.client = client
        self.key = leader_key(CLUSTER)
        self.lease: int | None = None

    def point_to(self, replica_id: str, side: LogSide) -> int:
        """The key names `side`; its epoch (create revision)."""
        self.clear()
        self.lease, _ = self.client.lease_grant(60)
        value = json.dumps({"replica_id": replica_id, "address": side.endpoint}).encode()
        created, held = self.client.create_if_absent(self.key, value, self.lease)
        assert created, held
        return held.create_revision

    def clear(self) -> None:
        if self.lease is not None:
            self.client.lease_revoke(self.lease)  # the key goes with its lease
            self.lease = None


def cluster_front(node_factory, etcd_server, *extra: str):  # noqa: ANN001, ANN201
    node = node_factory(
        "--roles",
        "front",
        "--cluster",
        CLUSTER,
        "--coordinator",
        etcd_server.endpoint,
        "--insecure",
        *extra,
    )
    node.call_ok({"type": "init", "node_id": "n1", "node_ids": NODE_IDS}, src="c0", dest="n1")
    return node


def append(node, payload: str, timeout: float = 15) -> dict:  # noqa: ANN001
    return node.call({"type": "wal_append", "payload": payload}, timeout=timeout, dest="n1")


def read(node, offset: int) -> dict:  # noqa: ANN001
    return node.call({"type": "wal_read", "offset": offset}, dest="n1")


def test_front_follows_the_leader_key(node_factory, log_side_factory, etcd_server):  # noqa: F811
    a = log_side_factory("--insecure")
    b = log_side_factory("--insecure")
    key = LeaderKey(etcd_server.client())
    key.point_to("ra", a)
    node = cluster_front(node_factory, etcd_server, "--request-timeout", "30")
    assert append(node, "a-0")["offset"] == 0
    assert append(node, "a-1")["offset"] == 1
    # a's writer stops answering: these appends are held by the leader when it changes
    writer_a = a.pid_of("writer")
    assert writer_a is not None
    os.kill(writer_a, signal.SIGSTOP)
    try:
        held = [
            node.send({"type": "wal_append", "payload": f"held-{i}"}, dest="n1") for i in range(5)
        ]
        time.sleep(0.3)  # forwarded to a
        t0 = time.monotonic()
        key.point_to("rb", b)
        replies = [node.reply_to(mid, 10)["body"] for mid in held]
        moved = time.monotonic() - t0
        # what the old leader held is indefinite (13), and said so quickly: not a timeout (0)
        # after --request-timeout, nor a heartbeat loss (3 s)
        assert [r.get("code") for r in replies] == [13] * 5, replies
        assert all("stopped being the cluster's leader" in r["text"] for r in replies), replies
        # point_to revokes the old key before it creates the new one, as a real
        # handover goes through "no leader": the front may have read either view
        text = replies[0]["text"]
        assert "replica rb" in text or "etcd names no leader now" in text, replies[0]
        assert moved < 2.5, moved  # under the 3 s of a heartbeat loss; the text says why
        # new appends go to b: its log starts at 0
        after = append(node, "b-0")
        assert after["type"] == "wal_append_ok" and after["offset"] == 0, after
        assert read(node, 0)["payload"] == "b-0"
    finally:
        os.kill(writer_a, signal.SIGCONT)
    # a dies: nothing changes for the front, which follows b
    assert a.stop(signal.SIGKILL) == -signal.SIGKILL
    assert append(node, "b-1")["offset"] == 1
    info = node.call_ok({"type": "wal_info"}, dest="n1")
    assert info["next_offset"] == 2, info
    # a's log was not touched after the move: it holds exactly its two entries
    assert node.close() == 0, node.stderr_text()


def test_no_leader_holds_requests_then_11(node_factory, log_side_factory, etcd_server):  # noqa: F811
    a = log_side_factory("--insecure")
    key = LeaderKey(etcd_server.client())
    key.point_to("ra", a)
    node = cluster_front(node_factory, etcd_server, "--unavailable-wait", "1")
    assert append(node, "x-0")["offset"] == 0
    key.clear()
    # once the front has seen the key go, an append waits --unavailable-wait, then 11
    assert wait_until(lambda: "no leader" in node.stderr_text(), timeout=5), node.stderr_text()
    t0 = time.monotonic()
    refused = append(node, "x-1")
    waited = time.monotonic() - t0
    assert refused["code"] == 11 and "no leader" in refused["text"], refused
    assert 0.9 <= waited < 3, waited
    # a request held while there is no leader is sent once one is named again
    mid = node.send({"type": "wal_append", "payload": "x-2"}, dest="n1")
    time.sleep(0.2)
    key.point_to("ra", a)
    late = node.reply_to(mid, 10)["body"]
    assert late["type"] == "wal_append_ok" and late["offset"] == 1, late
    assert read(node, 1)["payload"] == "x-2"


def test_cluster_front_flags(node_factory, tmp_path):
    """--cluster on a front needs --coordinator (an http URL) and keys or --insecure, and
    replaces --connect: exit 2 naming what to pass."""
    cases = [
        (["--roles", "front", "--cluster", "c", "--insecure"], "--coordinator"),
        (
            ["--roles", "front", "--cluster", "c", "--coordinator", "etcd:2379", "--insecure"],
            "http",
        ),
        (["--roles", "front", "--cluster", "c", "--coordinator", "http://127.0.0.1:1"], "--keys"),
        (
            [
                "--cluster",
                "c",
                "--coordinator",
                "http://127.0.0.1:1",
                "--connect",
                "tcp://127.0.0.1:7000",
                "--insecure",
            ],
            "replaces --connect",
        ),
    ]
    for argv, expected in cases:
        node = node_factory(*argv)
        assert node.proc.wait(10) == 2, argv
        assert expected in node.stderr_text(), (argv, node.stderr_text())
