"""What the walnode supervisor does before anything else, even before its
own imports (about 100 ms: zmq, the wal library): it checks that fds 0, 1
and 2 are open, and it records stop signals instead of dying of them.

A closed stdin, stdout or stderr (`walnode ... >&-`) is the lowest free fd,
so the next file walnode opens (the data directory's LOCK, zmq's eventfd)
would become it and the front would write replies into the wrong file. A
SIGTERM before the supervisor's loop runs would kill it by default (exit
143) and leave its run directory behind; recorded, it stops walnode cleanly
(supervisor.py reads `stop_signals_received`). node.py calls both first,
so this module imports only the standard library and actors.codes.
"""

from __future__ import annotations

import os
import signal
import sys

from actors.codes import Exit

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STDIO = {0: "stdin", 1: "stdout", 2: "stderr"}

_received: list[int] = []  # the stop signals, in order of arrival


def closed_stdio() -> list[int]:
    """Which of fds 0, 1 and 2 are not open."""
    closed = []
    for fd in STDIO:
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    return closed


def check_stdio() -> None:
    """Exit 2 (Exit.USAGE) if fd 0, 1 or 2 is closed, saying so on stderr if
    stderr itself is open."""
    closed = closed_stdio()
    if not closed:
        return
    if 2 not in closed:
        names = " and ".join(f"{STDIO[fd]} (fd {fd})" for fd in closed)
        verb = "is" if len(closed) == 1 else "are"
        os.write(
            2,
            f"walnode: {names} {verb} closed: walnode reads requests on stdin, writes "
            f"replies on stdout and logs on stderr; start it with all three open "
            f"(redirect an unused one from or to /dev/null)\n".encode(),
        )
    sys.exit(Exit.USAGE)


def _record(signum: int, _frame: object) -> None:
    _received.append(signum)


def record_stop_signals() -> None:
    """From now on SIGTERM, SIGINT and SIGHUP are counted, not fatal (again:
    the same handler, so none is lost)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _record)


def stop_signals_received() -> int:
    return len(_received)


def first_stop_signal() -> str | None:
    """The name of the first stop signal received, if any."""
    return signal.Signals(_received[0]).name if _received else None
