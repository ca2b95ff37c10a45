"""The data directory: its layout, its lock, and its metadata file.

    DIR/LOCK            flock()ed by the process tree that uses DIR
    DIR/walnode.meta    JSON metadata, replaced atomically
    DIR/wal/            segment files
    DIR/snapshots/      snapshot files

One walnode at a time: the lock is an flock on DIR/LOCK, which the kernel
drops when the holder dies, so a crash never leaves a stale lock behind.
The file's text names the holder, for the refusal message.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket

from wal.errors import WalError
from wal.fsutil import atomic_write, make_dirs

FORMAT_VERSION = 1
META_NAME = "walnode.meta"
LOCK_NAME = "LOCK"


class DirectoryLocked(WalError):
    def __init__(self, path: str, holder: str) -> None:
        self.path, self.holder = path, holder
        super().__init__(
            f"data directory {path} is in use by {holder or 'another process'}; "
            f"stop that walnode or pass another --data-dir"
        )


class DataDir:
    def __init__(self, path: str, *, create: bool = True) -> None:
        self.path = os.path.abspath(path)
        if create and not os.path.isdir(self.path):
            make_dirs(self.path)
        self.wal_dir = os.path.join(self.path, "wal")
        self.snapshot_dir = os.path.join(self.path, "snapshots")
        self._lock_fd: int | None = None

    # -- lock --------------------------------------------------------------

    def lock(self, holder: str, inherited_fd: int | None = None) -> int:
        """Take the directory's exclusive lock; returns its file descriptor.

        `inherited_fd`: a lock fd the parent already holds (flock locks
        belong to the open file description, so re-locking it succeeds).
        Raises DirectoryLocked naming the holder if another process has it.
        """
        if inherited_fd is not None:
            fcntl.flock(inherited_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._lock_fd = inherited_fd
            return inherited_fd
        fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                os.close(fd)
                raise
            current = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise DirectoryLocked(self.path, current) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder} on {socket.gethostname()}\n".encode(), 0)
        self._lock_fd = fd
        return fd

    # -- metadata ----------------------------------------------------------

    @property
    def meta_path(self) -> str:
        return os.path.join(self.path, META_NAME)

    def read_meta(self) -> dict:
        try:
            with open(self.meta_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {"format": FORMAT_VERSION}
        try:
            meta = json.loads(raw)
            if not isinstance(meta, dict):
                raise ValueError("not an object")
        except ValueError:
            raise WalError(
                f"{self.meta_path} is not a JSON object; it is replaced atomically, "
                f"so this is damage from outside walnode: restore it or remove it "
                f"(the node id and segment size setting are then forgotten)"
            ) from None
        if meta.get("format") != FORMAT_VERSION:
            raise WalError(
                f"{self.meta_path} has format {meta.get('format')!r}; this walnode "
                f"reads format {FORMAT_VERSION}"
            )
        return meta

    def update_meta(self, **changes: object) -> dict:
        meta = self.read_meta()
        meta.update(changes)
        atomic_write(self.meta_path, json.dumps(meta, sort_keys=True).encode() + b"\n")
        return meta
