"""Crash points for tests (etcd's failpoints, in miniature).

`WALNODE_CRASH_AT=<name>` makes the process SIGKILL itself when it reaches
the point of that name, exactly as `kill -9` would at that instant. Unset,
each point costs one comparison. The points are listed in docs/TESTING.md.
`WALNODE_FS_TRACE` turns on the file-system trace of wal/fstrace.py.
"""

from __future__ import annotations

import os
import signal

from wal import fstrace

_CRASH_AT = os.environ.get("WALNODE_CRASH_AT", "")
fstrace.install_from_env()


def point(name: str) -> None:
    if name == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)
