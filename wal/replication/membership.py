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
