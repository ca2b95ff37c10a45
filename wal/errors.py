"""Errors the storage library raises."""


class WalError(Exception):
    """Base class of every error raised by the wal library."""


class DiskFull(WalError):
    """No space left (ENOSPC, EDQUOT). What the failed write had put in a
    file was cut off and fsynced away: none of it is in the log, so the
    requests it carried can be told plainly that they were not written."""


class CorruptionError(WalError):
    """A damaged record or file that is not a torn tail.

    Carries the file and byte position (None: the file as a whole) so an
    operator can look at it, and names the repair command: the writer
    refuses to start on it.
    """

    def __init__(self, path: str, position: int | None, reason: str) -> None:
        self.path = path
        self.position = position
        self.reason = reason
        where = path if position is None else f"{path} at byte {position}"
        super().__init__(
            f"corruption in {where}: {reason}; inspect with `walctl verify DIR` and "
            f"see what `walctl repair DIR` would do (it keeps every valid record at its offset)"
        )


class DataMissing(CorruptionError):
    """Acknowledged data is gone: a file walnode recorded is missing (deleted
    by hand, or the directory replaced). Serving on would reuse offsets."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.position, self.reason = path, None, reason
        WalError.__init__(
            self,
            f"acknowledged data is missing: {path}: {reason}; walnode will not serve "
            f"offsets again that it acknowledged once: restore the file (from a backup "
            f"or a replica), or point --data-dir at the right directory",
        )
