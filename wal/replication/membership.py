"""A cluster's fixed membership in etcd (docs/REPLICATION.md).

Each replica registers `/walnode/NAME/members/ID` = `{"address": LISTEN}` (bound to no lease: a
member stays one while it is down), and the first to start records the cluster's size once in
`/walnode/NAME/config` = `{"cluster_size": N}`; a replica started with another size is refused.
A replica does not campaign before all N members are registered: the majority counts of the
protocol are over the whole membership.
"""

from __future__ import annotations

import json

from wal.replication.etcd import EtcdClient


class MembershipError(Exception):
    """The cluster in etcd contradicts this replica's settings; the text says how."""


def members_prefix(cluster: str) -> bytes:
    return f"/walnode/{cluster}/members/".encode()


def config_key(cluster: str) -> bytes:
    return f"/walnode/{cluster}/config".encode()


def check_new_member(client: EtcdClient, cluster: str, replica_id: str, data_dir: str) -> None:
    """For a data directory that has never been a member: MembershipError if `replica_id` is one
    already. Its data directory was lost or replaced: with an empty log it would answer a
    candidate's position check as one that never acknowledged anything, so it and a replica
    that missed an acknowledged entry could elect a leader without it (etcd refuses a member
    that lost its data directory for the same reason; Raft assumes no disk is lost)."""
    if client.get(members_prefix(cluster) + replica_id.encode()) is None:
        return
    raise MembershipError(
        f"replica {replica_id!r} is already a member of cluster {cluster!r} in etcd, but data "
        f"directory {data_dir} has never been its (walnode.meta names no cluster membership): "
        "its log was lost or replaced, and a member with an empty log could help elect a leader "
        "that lacks acknowledged entries, so it does not start. Start it on its own data "
        "directory; a replica whose disk is gone cannot rejoin under its id (docs/REPLICATION.md)"
    )


def member_mark(cluster: str, replica_id: str) -> str:
    """What a member's walnode.meta records as `cluster_member` before it first registers."""
    return f"{cluster}/{replica_id}"


def register(client: EtcdClient, cluster: str, replica_id: str, address: str, size: int) -> None:
    """Record this replica (and, if first, the cluster's size); MembershipError if the cluster
    was created with another size."""
    config = json.dumps({"cluster_size": size}).encode()
    created, held = client.create_if_absent(config_key(cluster), config, 0)
    if not created:
        recorded = json.loads(held.value).get("cluster_size")
        if recorded != size:
            raise MembershipError(
                f"cluster {cluster!r} has --cluster-size {recorded} in etcd, this replica was "
                f"started with --cluster-size {size}: start it with {recorded}"
            )
    key = members_prefix(cluster) + replica_id.encode()
    client.put(key, json.dumps({"address": address}).encode())


def members(client: EtcdClient, cluster: str) -> dict[str, str]:
    """Every registered replica id and its address."""
    prefix = members_prefix(cluster)
    return {
        kv.key[len(prefix) :].decode(): json.loads(kv.value)["address"]
        for kv in client.get_prefix(prefix)
    }
