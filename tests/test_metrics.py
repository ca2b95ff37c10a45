"""--metrics-listen: Prometheus /metrics over real HTTP from a real process tree."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.nodeproc import NODE, REPO, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text page: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return samples(resp.read().decode())


def listening_tcp_ports(pids: list[int]) -> set[int]:
    """The tcp ports these processes listen on, from /proc (no guessing by port)."""
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                cols = row.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def test_metrics_count_appends_fsyncs_snapshots_and_a_writer_restart(node_factory, data_dir):
    port = free_port()
    node = node_factory(
        "--data-dir", data_dir, "--metrics-listen", f"127.0.0.1:{port}", "--no-auto-compact"
    )
    node.init()
    acked = 0
    for i in range(30):
        reply = node.call({"type": "wal_append", "payload": f"set k{i}={i}"})
        acked += reply["type"] == "wal_append_ok"
    snap = node.call_ok({"type": "wal_snapshot"})
    writer = node.pids()["writer"]
    os.kill(writer, signal.SIGKILL)
    assert wait_until(lambda: node.restarted("writer", writer), timeout=10)
    for i in range(20):
        reply = node.call({"type": "wal_append", "payload": f"set j{i}={i}"})
        acked += reply["type"] == "wal_append_ok"
    info = node.call_ok({"type": "wal_info"})
    node.call_ok({"type": "wal_compact", "snapshot_at_offset": snap["snapshot_offset"]})
    assert acked == 50 and info["next_offset"] == 50

    assert listening_tcp_ports(list(node.pids().values())) == {port}
    got = scrape(port)
    # counted in two writers, one of them SIGKILLed: exact all the same
    assert got[("walnode_appends_total", ())] == acked
    assert got[("walnode_wal_appended_bytes_total", ())] == info["total_bytes"]
    fsyncs = got[("walnode_wal_fsync_duration_seconds_count", ())]
    assert fsyncs > 0
    assert got[("walnode_wal_fsync_duration_seconds_bucket", (("le", "+Inf"),))] == fsyncs
    # every acknowledged append was made durable by exactly one counted fsync
    assert got[("walnode_group_commit_entries_count", ())] == fsyncs
    assert got[("walnode_group_commit_entries_sum", ())] == acked
    assert got[("walnode_wal_segments", ())] == node.call_ok({"type": "wal_info"})["segments"]
    assert got[("walnode_snapshot_duration_seconds_count", ())] == 1
    assert got[("walnode_compaction_duration_seconds_count", (("kind", "compact"),))] == 1
    assert got[("walnode_restarts_total", (("role", "writer"),))] == 1
    assert got[("walnode_restarts_total", (("role", "compactor"),))] == 0
    assert got[("walnode_restarts_total", (("role", "front"),))] == 0
    # the writer recovered twice (start, restart), the compactor once
    assert got[("walnode_recovery_duration_seconds_count", (("role", "writer"),))] == 2
    assert got[("walnode_recovery_duration_seconds_count", (("role", "compactor"),))] == 1
    # no cluster: no replica lag is made up
    assert not any(name.startswith("walnode_replica_lag") for name, _ in got)
    assert node.close() == 0


def test_without_the_flag_nothing_listens(node_factory):
    node = node_factory()
    node.init()
    node.call_ok({"type": "wal_append", "payload": "x"})
    pids = list(node.pids().values())
    assert len(pids) == 4
    assert listening_tcp_ports(pids) == set()
    assert node.close() == 0


def run_walnode(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A walnode expected to stop at start: no input, its output captured."""
    return subprocess.run(
        [sys.executable, NODE, *args],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "value", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", ":9464", "127.0.0.1:http"]
)
def test_a_bad_metrics_address_stops_walnode_at_start(value):
    r = run_walnode("--metrics-listen", value)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert "--metrics-listen" in r.stderr and "PORT 1 to 65535" in r.stderr


def test_a_metrics_port_in_use_stops_walnode_at_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_walnode("--data-dir", str(tmp_path / "d"), "--metrics-listen", f"127.0.0.1:{port}")
        # without --data-dir: no fresh data directory is made and left behind either
        fresh = run_walnode("--metrics-listen", f"127.0.0.1:{port}", env={"TMPDIR": str(tmp_path)})
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert f"--metrics-listen 127.0.0.1:{port}: cannot listen there" in r.stderr
    assert "started writer" not in r.stderr
    assert not (tmp_path / "d").exists()  # refused before the data directory is made
    assert fresh.returncode == 2, fresh.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("walnode-")]


HOOK_SCRIPT = """
import os, sys
from actors.metrics import WriterMetrics
from wal import Log
wal, _ = Log.open(sys.argv[1])
WriterMetrics(wal).replica_lag("n2", 7)
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry, path=os.environ["WALNODE_METRICS_DIR"])
sys.stdout.write(generate_latest(registry).decode())
"""


def test_the_replica_lag_hook_exports_what_it_is_given(tmp_path):
    """Nothing calls the hook yet (no replication); called, it exports exactly its value."""
    (tmp_path / "metrics").mkdir()
    r = subprocess.run(
        [sys.executable, "-c", HOOK_SCRIPT, str(tmp_path / "wal")],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=REPO,
        env={**os.environ, "WALNODE_METRICS_DIR": str(tmp_path / "metrics")},
    )
    assert r.returncode == 0, r.stderr
    got = samples(r.stdout)
    assert got[("walnode_replica_lag_entries", (("replica", "n2"),))] == 7
    assert got[("walnode_wal_segments", ())] == 1
