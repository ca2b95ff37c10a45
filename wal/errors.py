"""Errors the storage library raises."""


class WalError(Exception):
    """Base class of every error raised by the wal library."""


class DiskFull(WalError):
    """No space left (ENOSPC, EDQUOT). What the failed write had put in a
    file was cut off and fsynced away: none of it is in the log, so the
    requests it carried can be told plainly that they were not written."""


class CorruptionError(WalError):
    """A damaged record or file that is not a torn tail.

    Carries the file and byte position so an operator can look at it, and
    names the repair command: the writer refuses to start on it.
    """

    def __init__(self, path: str, position: int, reason: str) -> None:
        self.path = path
        self.position = position
        self.reason = reason
        super().__init__(
            f"corruption in {path} at byte {position}: {reason}; "
            f"inspect with `walctl verify DIR` and, to keep the longest valid "
            f"prefix, run `walctl repair DIR`"
        )
