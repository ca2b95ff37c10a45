"""fsync_benchmark: what each fsync policy costs on this disk, measured.

Real records are appended to a scratch file beside the log (same file
system, never the log itself) under each strategy, and the scratch file is
removed afterwards:

- always:     write + fdatasync per record
- batch_10ms: write per record, fdatasync whenever 10 ms have passed and
              once at the end (so the run ends durable)
- none:       write per record, no fdatasync
"""

from __future__ import annotations

import contextlib
import os
import time

from wal import record
from wal.fsutil import disk_full_undone, write_all

STRATEGIES = {
    "always": ("every_write", "0ms"),
    "batch_10ms": ("every_10ms", "10ms"),
    "none": ("os_dependent", "seconds"),
}
PAYLOAD = b"set benchmark=" + b"x" * 50


def measure(directory: str, entries: int, strategy: str) -> dict:
    """One strategy's run; DiskFull (and no scratch file left) if the disk is full."""
    data, _ = record.encode(PAYLOAD)
    path = os.path.join(directory, f"fsync-benchmark-{os.getpid()}.tmp")
    try:
        with disk_full_undone(path):
            elapsed = _run(path, data, entries, strategy)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    durability, window = STRATEGIES[strategy]
    return {
        "strategy": strategy,
        "ops_per_sec": round(entries / elapsed),
        "durability": durability,
        "data_loss_window": window,
    }


def _run(path: str, data: bytes, entries: int, strategy: str) -> float:
    """Seconds to write `entries` records to a new file at `path` under `strategy`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = last_sync = time.perf_counter()
        for _ in range(entries):
            write_all(fd, data)
            if strategy == "always":
                os.fdatasync(fd)
            elif strategy == "batch_10ms" and time.perf_counter() - last_sync >= 0.010:
                os.fdatasync(fd)
                last_sync = time.perf_counter()
        if strategy == "batch_10ms":
            os.fdatasync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fd)
