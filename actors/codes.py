"""Every number walnode's processes say to each other or to the user, named once.

`Code` is the protocol's error codes (docs/PROTOCOL.md, Maelstrom's numbers);
`Exit` is how a walnode process exits, which the supervisor reads to decide
between restarting a child and stopping the node.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """Protocol error codes (an _ok reply travels inside walnode as messages.OK)."""

    TIMEOUT = 0
    NOT_SUPPORTED = 10
    TEMPORARILY_UNAVAILABLE = 11
    MALFORMED_REQUEST = 12
    CRASH = 13
    KEY_DOES_NOT_EXIST = 20
    PRECONDITION_FAILED = 22


# Codes whose outcome is definite: the request certainly did not happen.
DEFINITE = frozenset(
    {
        Code.NOT_SUPPORTED,
        Code.TEMPORARILY_UNAVAILABLE,
        Code.MALFORMED_REQUEST,
        Code.KEY_DOES_NOT_EXIST,
        Code.PRECONDITION_FAILED,
    }
)


class Exit(IntEnum):
    """Process exit statuses. CORRUPT, LOCKED and CANNOT_LISTEN are fatal:
    restarting into the same directory or address cannot help."""

    OK = 0
    FAILED = 1  # stopped at once (second signal, deadline) or a child gave up
    USAGE = 2  # a flag out of range, a bad command line
    CORRUPT = 3  # the log (writer) or the state (compactor) cannot be rebuilt
    LOCKED = 4  # another walnode holds the data directory
    IO = 5  # a write or fsync failed: restart and recover from the files
    CANNOT_LISTEN = 6  # --listen's address is not this host's or in use
    # The front's: the reader of stdout closed it (EPIPE), so nothing more can
    # be answered; the supervisor stops the node in order, no restart, exit 0.
    STDOUT_CLOSED = 7
