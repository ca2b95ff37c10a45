"""walnode: a durable write-ahead log node, JSON lines on stdin and stdout.

The command line: the flags (each role's from actors/config.py, plus where
the data lives and which roles run on this host), checked before anything
starts; then supervisor.run does the rest. See README.md for the flags and
docs/PROTOCOL.md for the messages.
"""

from __future__ import annotations

from actors import startup

# First, before the imports below (about 100 ms) open anything: fds 0-2
# must be open, and a stop signal from now on stops walnode cleanly.
startup.check_stdio()
startup.record_stop_signals()

import argparse
import re
import sys
from typing import TYPE_CHECKING

if __package__:  # installed, as walnode_entry.node (pyproject.toml says why)
    from walnode_entry import supervisor
else:  # a checkout: python node.py
    import supervisor
from actors import metrics, sockets
from actors.config import (
    ACKS,
    ROLE_CONFIGS,
    ClusterConfig,
    CompactorConfig,
    FrontConfig,
    NodeConfig,
    SupervisorConfig,
    WriterConfig,
)
from actors.runtime import setup_logging

if TYPE_CHECKING:  # actors.leader imports etcd's client, urllib: only a following front's
    from actors.leader import LeaderSource

log = setup_logging("supervisor")  # this process is the supervisor

ALL_ROLES = frozenset({"writer", "compactor", "front"})
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a cluster's or replica's name: an etcd key part
LOG_SIDE = frozenset({"writer", "compactor"})


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        help="keep the log here across runs (default: a fresh directory per run, named on stderr)",
    )
    for config in ROLE_CONFIGS:
        config.add_flags(p)
    p.add_argument(
        "--roles",
        default=None,
        help="the processes this host runs: writer,compactor,front (default), writer,compactor "
        "(the log side, with --listen) or front (with --connect)",
    )
    p.add_argument(
        "--listen",
        metavar="tcp://HOST:PORT",
        help="log side: serve remote fronts here (writer at PORT, compactor at PORT+1)",
    )
    p.add_argument(
        "--connect",
        metavar="tcp://HOST:PORT",
        help="a front only: reach the log side's --listen endpoint (implies --roles front)",
    )
    p.add_argument("--keys", metavar="KEYDIR", help="CURVE keys for tcp (walctl keygen KEYDIR)")
    p.add_argument(
        "--key-name",
        default=sockets.DEFAULT_KEY_NAME,
        help=f"this front's key pair in KEYDIR ({sockets.DEFAULT_KEY_NAME})",
    )
    p.add_argument(
        "--insecure", action="store_true", help="plain tcp without CURVE (a warning is logged)"
    )
    p.add_argument(
        metrics.FLAG,
        type=metrics.listen_address,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (docs/METRICS.md); "
        "default: none, nothing listens",
    )


def check_topology(p: argparse.ArgumentParser, args: argparse.Namespace) -> frozenset[str]:
    """Settle --roles, --listen and --connect (args.remote), or exit 2 saying
    what to pass; the roles this host runs."""
    if args.roles is None:
        args.roles = "front" if args.connect else "writer,compactor,front"
    roles = frozenset(args.roles.split(","))
    if not roles or not roles <= ALL_ROLES:
        p.error(f"--roles is a comma-separated subset of writer,compactor,front, got {args.roles}")
    if roles not in (ALL_ROLES, LOG_SIDE, {"front"}):
        p.error(
            "--roles must be writer,compactor,front (one host), writer,compactor (the log "
            "side) or front (with --connect)"
        )
    args.follow = check_follow(p, args, roles)
    if roles == {"front"} and not args.connect and args.follow is None:
        p.error(
            "--roles front needs --connect tcp://HOST:PORT (the log side's --listen), or "
            "--cluster NAME --coordinator URL (a replicated log's leader)"
        )
    if args.connect and "writer" in roles:
        p.error("--connect is for a front without a local writer: --roles front")
    if args.listen and "writer" not in roles:
        p.error("--listen is for the log side: --roles writer,compactor")
    endpoint = args.listen or args.connect
    args.remote = None
    if endpoint is None:
        return roles
    try:
        sockets.parse_tcp(endpoint)
    except ValueError as err:
        p.error(str(err))
    if args.keys is None and not args.insecure:
        p.error(
            "tcp needs CURVE keys: --keys KEYDIR (make them with `walctl keygen "
            "KEYDIR`), or --insecure for plain tcp that anyone on the network can use"
        )
    if args.insecure:
        log.warning("--insecure: %s is plain tcp, unauthenticated and unencrypted", endpoint)
    args.remote = sockets.remote_from(endpoint, args)
    if args.keys is not None and not args.insecure:
        check_keys(p, args.keys, sockets.SERVER_KEY if args.listen else args.key_name)
    return roles


def check_follow(
    p: argparse.ArgumentParser, args: argparse.Namespace, roles: frozenset[str]
) -> LeaderSource | None:
    """A front that follows a cluster's leader: --roles front --cluster --coordinator, with
    keys or --insecure (the leader's endpoint comes from etcd); None for any other front."""
    if args.cluster is None or roles != {"front"}:
        return None
    from actors.leader import LeaderSource  # here, not at the top: TYPE_CHECKING says why

    if args.connect:
        p.error("--cluster replaces --connect: the front connects to the leader etcd names")
    if args.coordinator is None or not args.coordinator.startswith(("http://", "https://")):
        p.error(
            f"--roles front --cluster needs --coordinator http://HOST:PORT (etcd's client "
            f"URL), got {args.coordinator!r}"
        )
    if args.insecure:
        log.warning("--insecure: the front reaches cluster %s over plain tcp", args.cluster)
        return LeaderSource(args.cluster, args.coordinator, None, args.key_name)
    if args.keys is None:
        p.error(
            "a cluster's front reaches the leader over tcp, which needs CURVE keys: --keys "
            "KEYDIR (the replicas' KEYDIR, from `walctl keygen`), or --insecure"
        )
    check_keys(p, args.keys, args.key_name)
    return LeaderSource(args.cluster, args.coordinator, args.keys, args.key_name)


def check_keys(p: argparse.ArgumentParser, keys: str, name: str) -> None:
    """Exit 2 unless KEYDIR holds the key pair `name` and the server's public key."""
    try:
        sockets.key_pair(keys, name)
        sockets.public_key(keys, sockets.SERVER_KEY)
    except (OSError, ValueError) as err:
        p.error(f"cannot read the keys in {keys} ({err}); make them with `walctl keygen {keys}`")


def check_cluster(
    p: argparse.ArgumentParser, args: argparse.Namespace, roles: frozenset[str]
) -> ClusterConfig:
    """Settle the replication flags (docs/REPLICATION.md), or exit 2 saying what to pass."""
    cluster = ClusterConfig.from_args(args)
    if cluster.acks not in ACKS:
        p.error(f"--acks must be one of {', '.join(ACKS)}, got {cluster.acks!r}")
    if cluster.cluster_size % 2 == 0:
        p.error(
            f"--cluster-size must be odd (1, 3, 5 or 7), got {cluster.cluster_size}: an even "
            "size tolerates no more failures than the odd size below it"
        )
    for flag, value in (("--cluster", cluster.cluster), ("--replica-id", cluster.replica_id)):
        if value is not None and (not value or not NAME_RE.fullmatch(value)):
            p.error(
                f"{flag} must be 1 to 64 letters, digits, '.', '_' or '-' (it names an etcd "
                f"key), got {value!r}"
            )
    if not cluster.enabled:
        given = [f for f in ("coordinator", "replica_id") if getattr(cluster, f) is not None]
        if given:
            p.error(f"--{given[0].replace('_', '-')} is for a replica: pass --cluster NAME too")
        return cluster
    if "writer" in roles:
        if args.fsync.name != "always":
            p.error(
                f"--cluster needs --fsync always (got {args.fsync}): a replica counts toward "
                "a majority only what it has fsynced"
            )
        missing = [
            flag
            for flag, value in (
                ("--listen tcp://HOST:PORT", args.listen),
                ("--coordinator URL", cluster.coordinator),
                ("--replica-id ID", cluster.replica_id),
            )
            if value is None
        ]
        if missing:
            p.error(f"--cluster with the writer role needs {', '.join(missing)}")
    return cluster


def parse(argv: list[str] | None = None) -> NodeConfig:
    """The node's configuration from its command line; exit 2 (Exit.USAGE)
    naming the flag for anything out of range or inconsistent."""
    p = argparse.ArgumentParser(prog="walnode", description="a durable write-ahead log node")
    add_flags(p)
    args = p.parse_args(argv)
    roles = check_topology(p, args)
    cluster = check_cluster(p, args, roles)
    return NodeConfig(
        roles=roles,
        data_dir=args.data_dir,
        writer=WriterConfig.from_args(args),
        compactor=CompactorConfig.from_args(args),
        front=FrontConfig.from_args(args),
        supervisor=SupervisorConfig.from_args(args),
        cluster=cluster,
        listen=args.remote if args.listen else None,
        connect=args.remote if args.connect else None,
        follow=args.follow,
        metrics_listen=args.metrics_listen,
    )


def main(argv: list[str] | None = None) -> int:
    return supervisor.run(parse(argv))


if __name__ == "__main__":
    sys.exit(main())
