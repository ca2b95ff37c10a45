"""A replicated walnode on this host, as a user starts one: a real etcd (walctl/etcdproc.py),
CURVE keys (`walctl keygen`), and N replicas (`walnode --roles writer,compactor --cluster NAME
...`), each in its own process group with its own data directory and log file; and the argv of a
front that follows its leader. Used by `walctl crashtest --cluster` and `walctl bench --cluster`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from walctl import keygen
from walctl.etcdproc import EtcdServer
from walnode import node_command

CLUSTER = "local"


class ClusterError(Exception):
    """The cluster could not start or lost a process; the text says which and where its log is."""


def listen_port_range() -> tuple[int, int]:
    """Ports to listen on: below the kernel's ephemeral range, so that no outgoing connection
    (a replica's to etcd or to another) can take one between our probe and the bind."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return (10000, low - 1) if low > 12000 else (low + 20000, 65000)


def free_ports(n: int) -> int:
    """A port P with P..P+n-1 free on 127.0.0.1 (a replica's writer, compactor, peers)."""
    low, high = listen_port_range()
    for _ in range(200):
        port = random.randrange(low, high - n)
        try:
            for k in range(n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + k))
        except OSError:
            continue
        return port
    raise ClusterError(f"no {n} consecutive free ports on 127.0.0.1 in {low}..{high}")


@dataclass
class Replica:
    """One replica's walnode, in its own process group (so kill -9 takes its whole tree)."""

    replica_id: str
    argv: list[str]
    data_dir: str
    log_path: str
    proc: subprocess.Popen | None = None
    down: bool = False  # killed or frozen by the campaign: not serving, on purpose
    # a trace of every change under data_dir (wal/fstrace.py) across its runs, for a power
    # cut through wal/powerloss.py's model; None: not traced
    trace: str | None = None

    def start(self) -> None:
        env = None
        if self.trace is not None:
            from wal.fstrace import ROOT_ENV, TRACE_ENV

            root = os.path.abspath(self.data_dir)
            os.makedirs(root, exist_ok=True)  # the model starts from the empty root
            env = {**os.environ, TRACE_ENV: self.trace, ROOT_ENV: root}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        self.down = False

    def power_cut(self, rng: random.Random) -> str:
        """The replica is dead (kill()): its data directory becomes what a disk that kept only
        what was synced, and a random part of the rest, would hold (wal/powerloss.py's model
        replaying the trace). The trace ends here: the directory no longer matches it."""
        from wal import powerloss

        assert self.trace is not None, "a power cut needs a traced replica"
        disk = powerloss.Disk(self.data_dir)
        for record in powerloss.read_trace(self.trace):
            disk.apply(record)
        keep = powerloss.random_keep(disk, rng)
        tree = disk.crash_state(keep)
        size = sum(len(data or b"") for data in disk.live_state().values())
        dropped = size - sum(len(data or b"") for data in tree.values())
        shutil.rmtree(self.data_dir)
        powerloss.materialize(tree, self.data_dir)
        self.trace = None
        return f"{keep.how}: {dropped} of {size} bytes gone"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal_group(self, sig: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """kill -9 the whole process group, and reap its leader (the supervisor)."""
        self.signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (a graceful stop), then the group's SIGKILL if it lingers; the exit status."""
        if self.proc is None:
            return None
        self.signal_group(signal.SIGCONT)  # a frozen one must be able to stop
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        status = self.proc.poll()
        self.kill()  # whatever is left of the group
        return status


class LocalCluster:
    """etcd, keys and `size` replicas under `root`; `start` runs them, `stop` ends every one."""

    def __init__(
        self,
        root: str,
        size: int = 3,
        lease_ttl: int = 2,
        acks: str = "quorum",
        traced: bool = False,
    ) -> None:
        """traced: every replica's file-system changes are traced (Replica.power_cut)."""
        self.traced = traced
        self.root = root
        self.size = size
        self.lease_ttl = lease_ttl
        self.acks = acks
        self.etcd = EtcdServer(os.path.join(root, "etcd"))
        self.keys = os.path.join(root, "keys")
        self.replicas: dict[str, Replica] = {}

    def replica_argv(self, replica_id: str, port: int) -> list[str]:
        return [
            *node_command(),
            "--roles",
            "writer,compactor",
            "--listen",
            f"tcp://127.0.0.1:{port}",
            "--keys",
            self.keys,
            "--data-dir",
            os.path.join(self.root, replica_id),
            "--cluster",
            CLUSTER,
            "--coordinator",
            self.etcd.endpoint,
            "--replica-id",
            replica_id,
            "--lease-ttl",
            str(self.lease_ttl),
            "--cluster-size",
            str(self.size),
            "--acks",
            self.acks,
            "--max-restarts",
            "100",  # the faults are deliberate; a crash loop still ends the replica
        ]

    def front_argv(self, unavailable_wait: float) -> list[str]:
        """A front of this cluster (`--unavailable-wait`: how long it holds a request)."""
        return [*node_command(), *self.front_flags(unavailable_wait)]

    def front_flags(self, unavailable_wait: float) -> list[str]:
        return [
            "--roles",
            "front",
            "--cluster",
            CLUSTER,
            "--coordinator",
            self.etcd.endpoint,
            "--keys",
            self.keys,
            "--unavailable-wait",
            f"{unavailable_wait:g}",
        ]

    def start(self, leader_timeout: float = 30.0) -> Replica:
        """etcd, keys, every replica; the first leader."""
        os.makedirs(self.etcd.data_dir, exist_ok=True)
        self.etcd.start()
        with open(os.devnull, "w") as quiet:
            stdout, sys.stdout = sys.stdout, quiet  # keygen says what it made
            try:
                keygen.run(argparse.Namespace(keydir=self.keys, client="client", no_allow=False))
            finally:
                sys.stdout = stdout
        for n in range(1, self.size + 1):
            rid = f"r{n}"
            replica = Replica(
                rid,
                self.replica_argv(rid, free_ports(3)),
                os.path.join(self.root, rid),
                os.path.join(self.root, f"{rid}.log"),
                trace=os.path.join(self.root, f"{rid}.trace") if self.traced else None,
            )
            self.replicas[rid] = replica
            replica.start()
        return self.leader(leader_timeout)

    def leader(self, timeout: float) -> Replica:
        """The replica etcd names leader, once it names one that is not down on purpose."""
        from wal.replication.election import leader_key, read_leader
        from wal.replication.etcd import EtcdError

        client = self.etcd.client(timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            try:
                held = read_leader(client, leader_key(CLUSTER))
            except EtcdError:
                held = None
            replica = self.replicas.get(held.replica_id) if held else None
            if replica is not None and not replica.down:
                return replica
            time.sleep(0.05)
        raise ClusterError(f"etcd named no live leader within {timeout:g} s; see {self.logs()}")

    def check(self) -> None:
        """ClusterError if a replica exited that was not killed on purpose."""
        for r in self.replicas.values():
            if not r.down and r.proc is not None and r.proc.poll() is not None:
                raise ClusterError(
                    f"replica {r.replica_id} exited {r.proc.returncode} unasked; see {r.log_path}"
                )

    def logs(self) -> str:
        return ", ".join(r.log_path for r in self.replicas.values())

    def stop(self, timeout: float = 15.0) -> None:
        for r in self.replicas.values():
            r.stop(timeout)
        self.etcd.stop()
