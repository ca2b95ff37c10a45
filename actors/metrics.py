"""Prometheus metrics (`--metrics-listen HOST:PORT`): each process counts, the supervisor serves.

prometheus_client's multiprocess mode: every process that counts something
(the writer, the compactor, the supervisor) writes its values into its own
mmapped files in the run directory's `metrics/`, and the supervisor serves
`/metrics` from a daemon thread that reads and merges those files at each
scrape. A value is in the page cache the moment it is counted, so a
SIGKILLed writer's counts stay exact, and a restarted writer's are added to
its predecessor's (counters never go back). docs/METRICS.md lists every
metric; docs/DESIGN.md says why this and not reports over the control socket.

Without the flag none of this is imported: `for_writer` and `for_compactor`
return None, and the hot path pays one `is not None` per group commit.
prometheus_client picks its mode when it is first imported, from
PROMETHEUS_MULTIPROC_DIR; `_client` sets that from walnode's own variable
first, so a PROMETHEUS_MULTIPROC_DIR the user exported never switches it on.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from actors.codes import Exit

if TYPE_CHECKING:
    from wal import Log

# Set by the supervisor for its children when --metrics-listen is given.
DIR_ENV = "WALNODE_METRICS_DIR"
FLAG = "--metrics-listen"


def _exponential(start: float, factor: float, count: int) -> tuple[float, ...]:
    """Prometheus' ExponentialBuckets (the Go client's), which the Python client lacks."""
    return tuple(start * factor**i for i in range(count))


# etcd's etcd_disk_wal_fsync_duration_seconds: ExponentialBuckets(0.001, 2, 14), 1 ms to 8 s;
# its snapshot and backend-commit histograms use the same.
DURATION_BUCKETS = _exponential(0.001, 2, 14)
# A restart after 10M entries took ~14 s before index files (BENCHMARKS.md): up to ~65 s.
RECOVERY_BUCKETS = _exponential(0.001, 2, 17)
# Entries made durable by one fsync: 1 to 16384 (MAX_DRAIN_MESSAGES messages of many requests).
BATCH_BUCKETS = _exponential(1, 2, 15)


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def listen_address(text: str) -> ListenAddress:
    """argparse type for --metrics-listen: HOST:PORT, PORT 1 to 65535 ([::1]:PORT for IPv6)."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    digits = port.isascii() and port.isdigit()
    if not sep or not host or not digits or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT with PORT 1 to 65535 (e.g. 127.0.0.1:9464), got {text!r}"
        )
    return ListenAddress(host, int(port))


def enabled() -> bool:
    return DIR_ENV in os.environ


def _client() -> ModuleType:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[DIR_ENV]
    import prometheus_client

    return prometheus_client


class WriterMetrics:
    """The writer's: appends, bytes, fsyncs, batches, segments, compactions.

    `committed` is called once per pass of the serve loop, after the replies
    left: appends are counted as the growth of next_offset since the last
    pass (a full disk's dropped appends never grew it), so the count is of
    acknowledged appends. A SIGKILL between the replies and the count loses
    that one pass from the count, never adds to it."""

    def __init__(self, wal: Log) -> None:
        pc = _client()
        self.appends = pc.Counter("walnode_appends", "Appends acknowledged (all writers)")
        self.bytes = pc.Counter(
            "walnode_wal_appended_bytes", "Record bytes (header and payload) appended to the log"
        )
        self.fsync = pc.Histogram(
            "walnode_wal_fsync_duration_seconds",
            "The latency of the fdatasyncs that made appends durable",
            buckets=DURATION_BUCKETS,
        )
        self.batch = pc.Histogram(
            "walnode_group_commit_entries",
            "Entries made durable by one fdatasync (the group-commit batch size)",
            buckets=BATCH_BUCKETS,
        )
        self.segments = pc.Gauge(
            "walnode_wal_segments",
            "Segment files in the log",
            multiprocess_mode="mostrecent",  # the newest writer's value, not a sum over restarts
        )
        self.rolls = pc.Counter(
            "walnode_wal_rolls",
            "Segment rolls, by whether the next segment was prepared ahead or created",
            ["next"],
        )
        self.roll = pc.Histogram(
            "walnode_wal_roll_duration_seconds",
            "A roll on the writer's thread: the old segment sealed and indexed, the next in place",
            buckets=DURATION_BUCKETS,
        )
        for kind in ("prepared", "created"):  # a 0 before the first roll, not a missing series
            self.rolls.labels(next=kind)
        wal.on_roll = self.rolled
        self.compaction = pc.Histogram(
            "walnode_compaction_duration_seconds",
            "How long the writer took to drop entries below an offset",
            ["kind"],
            buckets=DURATION_BUCKETS,
        )
        # The hook for a cluster's leader to report each replica's lag (it is in
        # status and wal_info already); nothing calls it, so the family has no samples.
        self.lag = pc.Gauge(
            "walnode_replica_lag_entries",
            "Entries durable here and not yet acknowledged by the replica",
            ["replica"],
            multiprocess_mode="mostrecent",
        )
        self._next_offset = wal.next_offset
        self._bytes = wal.bytes_appended
        self._segments = wal.segment_count
        self.segments.set(self._segments)

    def fsynced(self, entries: int, seconds: float) -> None:
        self.fsync.observe(seconds)
        self.batch.observe(entries)

    def committed(self, wal: Log) -> None:
        appended = wal.next_offset - self._next_offset
        if appended:
            self.appends.inc(appended)
            self._next_offset = wal.next_offset
            self.bytes.inc(wal.bytes_appended - self._bytes)
            self._bytes = wal.bytes_appended
        if wal.segment_count != self._segments:
            self._segments = wal.segment_count
            self.segments.set(self._segments)

    def rolled(self, prepared: bool, seconds: float) -> None:
        self.rolls.labels(next="prepared" if prepared else "created").inc()
        self.roll.observe(seconds)

    def compacted(self, whole_segments: bool, seconds: float) -> None:
        """`retention`: automatic, whole segments deleted; `compact`: wal_compact."""
        self.compaction.labels(kind="retention" if whole_segments else "compact").observe(seconds)

    def replica_lag(self, replica: str, entries: int) -> None:
        """Nothing calls this yet: it is where a leader would report each follower."""
        self.lag.labels(replica=replica).set(entries)


class CompactorMetrics:
    def __init__(self) -> None:
        pc = _client()
        self.snapshot = pc.Histogram(
            "walnode_snapshot_duration_seconds",
            "Writing one snapshot: temp file, fsync, rename, directory fsync",
            buckets=DURATION_BUCKETS,
        )

    def snapshot_written(self, seconds: float) -> None:
        self.snapshot.observe(seconds)


def for_writer(wal: Log) -> WriterMetrics | None:
    return WriterMetrics(wal) if enabled() else None


def for_compactor() -> CompactorMetrics | None:
    return CompactorMetrics() if enabled() else None


class MetricsServer:
    """The supervisor's part: the HTTP thread, restarts and recoveries per role.

    Recoveries are taken from the children's `ready` messages, which the
    supervisor reads anyway; restarts are the supervisor's own decisions."""

    def __init__(self, address: ListenAddress, run_dir: str, roles: Iterable[str]) -> None:
        self.directory = os.path.join(run_dir, "metrics")
        os.makedirs(self.directory, exist_ok=True)
        os.environ[DIR_ENV] = self.directory
        pc = _client()
        from prometheus_client import multiprocess

        self.restarts = pc.Counter("walnode_restarts", "Processes restarted", ["role"])
        self.recovery = pc.Histogram(
            "walnode_recovery_duration_seconds",
            "A process's recovery at start (the writer's check of the log, the "
            "compactor's snapshot load and replay), from its ready message",
            ["role"],
            buckets=RECOVERY_BUCKETS,
        )
        for role in sorted(roles):  # a 0 before the first restart, not a missing series
            self.restarts.labels(role=role)
        registry = pc.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.directory)
        self.server, _thread = pc.start_http_server(address.port, address.host, registry)

    def restarted(self, role: str) -> None:
        self.restarts.labels(role=role).inc()

    def recovered(self, role: str, duration_ms: float) -> None:
        self.recovery.labels(role=role).observe(duration_ms / 1000)


def serve(
    address: ListenAddress | None, run_dir: str, roles: Iterable[str], child_env: dict[str, str]
) -> MetricsServer | None:
    """Serve /metrics and switch the children's counting on (through `child_env`,
    the environment they are started with); exit 2 naming the flag when the
    address cannot be bound, before any child starts."""
    if address is None:
        return None
    try:
        server = MetricsServer(address, run_dir, roles)
    except OSError as err:
        logging.getLogger("supervisor").error(
            "%s %s: cannot listen there (%s); give an address of this host and a free port",
            FLAG,
            address,
            err.strerror or err,
        )
        raise SystemExit(Exit.USAGE) from None
    child_env[DIR_ENV] = server.directory
    return server
