"""A real replicated cluster for tests: N `walnode --roles writer,compactor --cluster ...`
processes (each in its own process group, so a test can SIGKILL or SIGSTOP a replica's whole
tree), the leader read from etcd, and a msgpack DEALER speaking the writer's internal protocol
(actors/messages.py) to a replica's --listen port, as a remote front does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import zmq

from actors import messages as m
from actors import procfs, sockets
from tests.nodeproc import NODE, REPO, walctl
from wal.replication.election import Leader, leader_key, read_leader
from wal.replication.etcd import EtcdClient
from walctl.localcluster import free_ports


@dataclass
class ReplicaProc:
    replica_id: str
    port: int
    data_dir: str
    log_path: str
    proc: subprocess.Popen | None = None
    stopped: bool = field(default=False)  # SIGSTOPped by the test

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def child_pid(self, module: str) -> int:
        """The pid of the supervisor's child running `python -m module` (actors.replica...)."""
        assert self.proc is not None
        for pid, argv in procfs.children(self.proc.pid).items():
            if module in argv:
                return pid
        raise AssertionError(f"no {module} under supervisor pid {self.proc.pid}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)  # the group we created: supervisor, replica, compactor


class Cluster:
    """`size` replicas of cluster `name` on etcd at `endpoint`, data under `root`."""

    def __init__(
        self,
        root: str,
        endpoint: str,
        size: int = 3,
        name: str = "c",
        ttl: int = 2,
        keys: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.endpoint, self.name, self.ttl = endpoint, name, ttl
        self.keys = keys  # KEYDIR for CURVE (walctl keygen), None: --insecure
        self.extra = list(extra)  # more walnode flags for every replica
        self.etcd = EtcdClient(endpoint, timeout=1.0)
        self.replicas = [
            ReplicaProc(
                f"r{i + 1}",
                free_ports(3),
                os.path.join(root, f"r{i + 1}"),
                os.path.join(root, f"r{i + 1}.log"),
            )
            for i in range(size)
        ]
        self.ctx = zmq.Context()

    def start(self, replica: ReplicaProc, env: dict[str, str] | None = None) -> None:
        argv = [sys.executable, NODE, "--roles", "writer,compactor", "--listen", replica.address]
        argv += ["--keys", self.keys] if self.keys else ["--insecure"]
        argv += ["--data-dir", replica.data_dir, "--cluster", self.name]
        argv += ["--coordinator", self.endpoint, "--replica-id", replica.replica_id]
        argv += ["--lease-ttl", str(self.ttl), "--cluster-size", str(len(self.replicas))]
        argv += self.extra
        with open(replica.log_path, "ab") as log:
            replica.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: killed as one
                env={**os.environ, **(env or {})},
            )
        replica.stopped = False

    def start_all(self) -> None:
        for replica in self.replicas:
            self.start(replica)

    def kill(self, replica: ReplicaProc) -> None:
        """SIGKILL the replica's whole process tree and reap it."""
        if replica.proc is None:
            return
        try:
            replica.signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        replica.proc.wait(10)
        replica.proc = None

    def stop_all(self) -> None:
        for replica in self.replicas:
            self.kill(replica)
        self.ctx.destroy(linger=0)

    def leader(self) -> Leader | None:
        return read_leader(self.etcd, leader_key(self.name))

    def by_id(self, replica_id: str) -> ReplicaProc:
        return next(r for r in self.replicas if r.replica_id == replica_id)

    def wait_serving(self, timeout: float, not_id: str | None = None) -> tuple[ReplicaProc, Link]:
        """The leader in etcd once it acknowledges an append (the time that took is the
        failover time): (its replica, a link to it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = self.leader()
            if held is not None and held.replica_id != not_id:
                replica = self.by_id(held.replica_id)
                link = self.link(replica)
                code, fields = link.request(m.OP_APPEND, b"probe", timeout=1.0)
                if code == m.OK:
                    return replica, link
                link.close()
            time.sleep(0.05)
        logs = {r.replica_id: tail(r.log_path) for r in self.replicas}
        raise AssertionError(f"no leader served within {timeout} s: {logs}")

    def link(self, replica: ReplicaProc, port_offset: int = 0) -> Link:
        """A link to the replica's writer (port_offset 0) or compactor (1)."""
        host, port = sockets.parse_tcp(replica.address)
        return Link(self.ctx, f"tcp://{host}:{port + port_offset}", self.keys)

    def dump(self, replica: ReplicaProc) -> list[str]:
        """The replica's log as `walctl dump` prints it, one line per entry."""
        done = walctl("dump", replica.data_dir)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()


class Link:
    """A DEALER to a replica's --listen port speaking the fronts' internal protocol."""

    def __init__(self, ctx: zmq.Context, address: str, keys: str | None = None) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:  # as a front with KEYDIR's client key
            public, secret = sockets.key_pair(keys, sockets.DEFAULT_KEY_NAME)
            self.sock.curve_publickey, self.sock.curve_secretkey = public, secret
            self.sock.curve_serverkey = sockets.public_key(keys, sockets.SERVER_KEY)
        self.sock.connect(address)
        self.next_rid = 0

    def send(self, op: str, arg: object) -> int:
        self.next_rid += 1
        self.sock.send(m.pack([m.REQUESTS, [[self.next_rid, op, arg]]]))
        return self.next_rid

    def replies(self, timeout: float) -> dict[int, tuple[int, dict]]:
        """Every reply that arrives within `timeout` s, by request id (an append's fields as
        the protocol has them: offset, length, checksum)."""
        out: dict[int, tuple[int, dict]] = {}
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and self.sock.poll(left * 1000):
            for rid, code, fields in m.unpack(self.sock.recv())[1]:
                out[rid] = (code, _fields(fields))
        return out

    def request(self, op: str, arg: object, timeout: float = 5.0) -> tuple[int, dict]:
        rid = self.send(op, arg)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and self.sock.poll(left * 1000):
            for got, code, fields in m.unpack(self.sock.recv())[1]:
                if got == rid:
                    return code, _fields(fields)
        return -1, {"text": f"no reply within {timeout} s"}

    def close(self) -> None:
        self.sock.close(0)


def _fields(fields: dict | list) -> dict:
    """An append's ok fields travel as a list (m.append_ok_fields), other replies' as a dict."""
    return m.append_fields(fields) if isinstance(fields, list) else fields


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
