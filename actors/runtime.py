"""What every child process does first: log to stderr, die with its parent."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

from actors.startup import STOP_SIGNALS
from wal import faults

PR_SET_PDEATHSIG = 1

# A test's failpoints and file-system trace, when its environment asks for
# them: installed in walnode's own processes (each imports this module
# first), so that the wal library imported alone stays plain.
faults.install_from_env()


def setup_logging(role: str) -> logging.Logger:
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("WALNODE_LOG_LEVEL", "INFO"),
        format=f"walnode {role}[%(process)d] %(levelname)s %(message)s",
    )
    return logging.getLogger(role)


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies.

    So a supervisor killed with SIGKILL leaves no orphans. The getppid check
    closes the race where the parent died before the prctl call.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: fall back to the check alone
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def ignore_stop_signals() -> None:
    """A child leaves SIGTERM, SIGINT and SIGHUP to the supervisor: a
    terminal's Ctrl-C or a `kill` of the process group reaches every
    process, and the supervisor stops them in order (front first, so every
    request read is answered; the writer last)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
