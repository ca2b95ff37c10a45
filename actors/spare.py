"""A spare: a process started ahead of need, which waits to take over a role.

A restarted writer spent most of its restart starting an interpreter and
importing zmq and the wal library (~100-250 ms on this machine), not
recovering the log (~35 ms at 10M entries). So the supervisor keeps one
writer spare: spawned once every process is ready, it imports what the writer
needs, then blocks reading a pipe the supervisor holds the other end of. When
the writer dies, the supervisor writes one byte into it: the spare returns
from `wait_for_promotion` and goes on as a writer does at start (lock, open
the log, bind, say ready). It opens nothing of the data directory before
that, and the supervisor promotes it only once the old writer is reaped, so
there is never more than one writer at a time.

The supervisor closing its end (it is stopping) or dying (PDEATHSIG kills
the spare anyway) makes the read return end of file: the spare exits 0,
having done nothing.
"""

from __future__ import annotations

import os
import sys

PROMOTE = b"p"  # the one byte the supervisor writes to promote the spare


def wait_for_promotion(fd: int) -> None:
    """Block until the supervisor promotes this spare; exit 0 if it never will."""
    got = os.read(fd, 1)  # a signal does not interrupt it (PEP 475 retries)
    os.close(fd)
    if got != PROMOTE:
        sys.exit(0)
