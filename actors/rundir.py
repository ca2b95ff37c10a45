"""The run directory: a private (0700) temp directory per walnode run.

It holds the sockets and the front's state and inbox (up to the inbox's
size of stdin). The supervisor removes it at the end of a run; a supervisor
killed with SIGKILL cannot, so each run directory names its supervisor (pid
and kernel start time, in OWNER_FILE) and the next walnode to start removes
those whose supervisor is gone. Only directories with that file are touched:
walnode made them, for this user.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile

from actors import procfs

PREFIX = "walnode-run-"
OWNER_FILE = "supervisor.pid"
# An ipc:// socket's path must fit sockaddr_un's sun_path (108 bytes with its
# NUL): in a deep TMPDIR the run directory's sockets could not be bound, so
# such a TMPDIR gives way to /tmp. The longest socket name, and mkdtemp's
# 8-character suffix, are counted.
SOCKET_PATH_MAX = 107
LONGEST_SOCKET = "supervisor.sock"
SHORT_PARENT = "/tmp"

log = logging.getLogger("supervisor")


def run_parent() -> str:
    """Where run directories go: the temp directory, or /tmp when a socket
    path in the temp directory would be too long to bind."""
    tmp = tempfile.gettempdir()
    if len(os.path.join(tmp, PREFIX + "x" * 8, LONGEST_SOCKET)) <= SOCKET_PATH_MAX:
        return tmp
    log.info(
        "the temp directory %s is too deep for ipc socket paths (%d bytes at most): the run "
        "directory goes to %s",
        tmp,
        SOCKET_PATH_MAX,
        SHORT_PARENT,
    )
    return SHORT_PARENT


def create() -> str:
    """A new run directory for this process, after removing stale ones."""
    where = run_parent()
    remove_stale(where)
    path = tempfile.mkdtemp(prefix=PREFIX, dir=where)
    pid = os.getpid()
    tmp = os.path.join(path, OWNER_FILE + ".tmp")
    with open(tmp, "w") as f:
        f.write(f"{pid} {procfs.start_time(pid)}\n")
    os.replace(tmp, os.path.join(path, OWNER_FILE))  # whole, or not there at all
    return path


def _owner(path: str) -> tuple[int, int] | None:
    """(pid, start time) of the supervisor a run directory names, or None if
    it is not one walnode made for this user."""
    try:
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            return None
        with open(os.path.join(path, OWNER_FILE)) as f:
            pid, started = f.read().split()
        return int(pid), int(started)
    except (OSError, ValueError):
        return None


def remove_stale(parent: str | None = None) -> list[str]:
    """Remove the run directories (in `parent`, default the temp directory)
    whose supervisor no longer runs; the paths removed."""
    where = parent or tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = [name for name in os.listdir(where) if name.startswith(PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(where, name)
        owner = _owner(path)
        if owner is None or procfs.start_time(owner[0]) == owner[1]:
            continue  # not walnode's, or its supervisor still runs
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s, left by walnode supervisor pid %d, which is gone", path, owner[0])
        removed.append(path)
    return removed
