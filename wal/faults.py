"""Faults for tests: crash points (etcd's failpoints, in miniature) and I/O errors.

`WALNODE_CRASH_AT=<name>` makes the process SIGKILL itself when it reaches
the point of that name, exactly as `kill -9` would at that instant.
With `WALNODE_CRASH_ONCE=<file>` as well, only the first process to reach
the point dies (it creates the file; a restarted one sees it and goes on):
for points every roll passes, which would otherwise kill each restart too.
`WALNODE_HOLD_AT=<name>:<switch file>` makes the thread that reaches that
point wait there while the switch file exists (a slow disk at one step, so a
test can watch what the rest of the process does meanwhile). Unset, each
point costs two comparisons. The points are listed in docs/TESTING.md.

`WALNODE_FAULT_IO=<call>:<ERRNO>:<switch file>[,...]` makes `os.<call>`
(write, pwrite, fsync or fdatasync) on regular files fail with ERRNO
(ENOSPC, EIO, ...) while the switch file exists, so a test can fill the
disk or break it and then mend it. A failing write first writes one byte past half of
its bytes and returns short, as a real disk filling up does.

`WALNODE_FS_TRACE` turns on the file-system trace of wal/fstrace.py. The
trace and the I/O faults are installed by `install_from_env()`, which
walnode's processes call at start (actors/runtime.py); importing `wal`
alone patches nothing.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import time
from collections.abc import Callable
from typing import cast

from wal import fstrace

_CRASH_AT = os.environ.get("WALNODE_CRASH_AT", "")
_CRASH_ONCE = os.environ.get("WALNODE_CRASH_ONCE", "")
_HOLD_AT, _, _HOLD_SWITCH = os.environ.get("WALNODE_HOLD_AT", "").partition(":")
HOLD_POLL_S = 0.01


def point(name: str) -> None:
    if name == _CRASH_AT and _first_crash():
        os.kill(os.getpid(), signal.SIGKILL)
    if name == _HOLD_AT:
        while os.path.exists(_HOLD_SWITCH):
            time.sleep(HOLD_POLL_S)


def _first_crash() -> bool:
    if not _CRASH_ONCE:
        return True
    try:
        os.close(os.open(_CRASH_ONCE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True


def _failing(call: str, real: Callable, code: int, switch: str) -> Callable:
    short_written: set[int] = set()  # fds that got their short write already

    def wrapper(fd: int, *args: object) -> object:
        if not os.path.exists(switch) or not stat.S_ISREG(os.fstat(fd).st_mode):
            short_written.discard(fd)
            return real(fd, *args)
        data = cast(bytes, args[0]) if args else b""
        if call in ("write", "pwrite") and fd not in short_written and len(data) > 1:
            short_written.add(fd)
            # one byte past the middle: a batch of an even number of equal
            # records is torn inside one, as a short write usually leaves it
            return real(fd, memoryview(data)[: min(len(data) - 1, len(data) // 2 + 1)], *args[1:])
        raise OSError(code, f"{os.strerror(code)} (injected by WALNODE_FAULT_IO)")

    return wrapper


def install_io_faults(spec: str) -> None:
    for item in filter(None, spec.split(",")):
        call, name, switch = item.split(":", 2)
        setattr(os, call, _failing(call, getattr(os, call), getattr(errno, name), switch))


def install_from_env() -> None:
    """Patch `os` as the environment asks: the file-system trace
    (wal/fstrace.py) and WALNODE_FAULT_IO. walnode's processes call it at
    start (actors/runtime.py); importing the library never patches anything."""
    fstrace.install_from_env()
    install_io_faults(os.environ.get("WALNODE_FAULT_IO", ""))
