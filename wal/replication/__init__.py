"""Replication of the log across replicas: the foundation (not yet wired into the processes).

A subpackage of `wal` so that its name cannot clash with any top-level name on PyPI
(`cluster`, `replication` and `election` all exist there). Like the rest of `wal` it is a plain
library: no ZeroMQ, no actors.

- `etcd`: a small client for etcd's v3 JSON gateway (leases, a create-if-absent transaction,
  reads), over urllib.
- `election`: leader election on etcd: a lease-bound key, its create revision as the epoch,
  keep-alive, and a local lease deadline that ends leadership before etcd can expire the lease.
- `protocol`: the replication protocol core, pure and deterministic (messages in, actions out).

docs/REPLICATION.md has the design, the messages and the safety argument.
"""
