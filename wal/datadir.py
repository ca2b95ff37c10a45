"""The data directory: its layout, its lock, and its metadata file.

    DIR/LOCK            flock()ed by the process tree that uses DIR
    DIR/walnode.meta    JSON metadata, replaced atomically
    DIR/wal/            segment files
    DIR/snapshots/      snapshot files
    DIR/state/          the compactor's state store (wal/statestore.py)

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
from collections.abc import Callable

from wal.errors import CorruptionError, DataMissing, WalError
from wal.fsutil import atomic_write, make_dirs
from wal.segment import parse_name

FORMAT_VERSION = 1
META_NAME = "walnode.meta"
LOCK_NAME = "LOCK"
MIN_SEGMENT_BYTES = 64
MAX_SEGMENT_BYTES = 1 << 30


def _is_id(v: object) -> bool:
    return isinstance(v, str) and bool(v)


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_segment_size(v: object) -> bool:
    return _is_count(v) and MIN_SEGMENT_BYTES <= v <= MAX_SEGMENT_BYTES  # type: ignore[operator]


# walnode.meta's fields: what a valid value is, and how to say it
META_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "node_id": (_is_id, "a non-empty string"),
    "node_ids": (lambda v: isinstance(v, list) and all(map(_is_id, v)), "a list of node ids"),
    "max_segment_bytes": (
        _is_segment_size,
        f"an integer from {MIN_SEGMENT_BYTES} to {MAX_SEGMENT_BYTES}",
    ),
    "reached_segment": (_is_count, "a segment's base offset (an integer from 0)"),
    # a replica's newest epoch seen (docs/REPLICATION.md); absent: 0
    "current_epoch": (_is_count, "an epoch (an integer from 0)"),
}


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
        self.state_dir = os.path.join(self.path, "state")
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

    # -- identity ----------------------------------------------------------

    def identity(self) -> tuple[int, int, int]:
        """(device, inode of the directory, inode of the LOCK file held): what
        `check_identity` compares against, taken once the lock is held."""
        if self._lock_fd is None:
            raise WalError("identity() needs the lock held")
        st = os.stat(self.path)
        return st.st_dev, st.st_ino, os.fstat(self._lock_fd).st_ino

    def check_identity(self, expected: tuple[int, int, int]) -> None:
        """DataMissing if the directory was deleted, replaced or moved away,
        or its LOCK file is not the one this process holds: two stats."""
        try:
            st = os.stat(self.path)
            lock_ino = os.stat(os.path.join(self.path, LOCK_NAME)).st_ino
        except FileNotFoundError as err:
            raise DataMissing(err.filename or self.path, "deleted while walnode used it") from None
        if (st.st_dev, st.st_ino) != expected[:2]:
            raise DataMissing(self.path, "replaced by another directory while walnode used it")
        if lock_ino != expected[2]:
            raise DataMissing(
                os.path.join(self.path, LOCK_NAME),
                "is not the lock this walnode holds (removed or replaced): another walnode "
                "could start here",
            )

    # -- metadata ----------------------------------------------------------

    @property
    def meta_path(self) -> str:
        return os.path.join(self.path, META_NAME)

    def _load_meta(self) -> dict | None:
        """The metadata object as stored; None if the file is missing."""
        try:
            with open(self.meta_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            meta = json.loads(raw)
            if not isinstance(meta, dict):
                raise ValueError("not an object")
        except ValueError:
            raise CorruptionError(
                self.meta_path,
                None,
                f"it is not a JSON object ({raw[:40]!r}); it is replaced atomically, so "
                f"this is damage from outside walnode",
            ) from None
        return meta

    def read_meta(self) -> dict:
        """The metadata, every known field checked: CorruptionError names the
        file, the field and its bad value."""
        meta = self._load_meta()
        if meta is None:  # a new directory, or one no walnode recorded anything in yet
            return {"format": FORMAT_VERSION}
        if meta.get("format") != FORMAT_VERSION:
            raise WalError(
                f"{self.meta_path} has format {meta.get('format')!r}; this walnode "
                f"reads format {FORMAT_VERSION}"
            )
        for name, value in meta.items():
            check = META_FIELDS.get(name)
            if check is not None and not check[0](value):
                raise CorruptionError(self.meta_path, None, f"{name} is {value!r}, not {check[1]}")
        return meta

    def repaired_meta(self) -> dict:
        """The metadata with every field that fails its check left out (for
        walctl repair); the log's reach is taken from its newest segment."""
        try:
            meta = self._load_meta() or {}
        except CorruptionError:
            meta = {}
        kept = {k: v for k, v in meta.items() if k not in META_FIELDS or META_FIELDS[k][0](v)}
        kept["format"] = FORMAT_VERSION
        if "reached_segment" not in kept and (bases := self.segment_bases()):
            kept["reached_segment"] = bases[-1]
        return kept

    def segment_bases(self) -> list[int]:
        try:
            names = os.listdir(self.wal_dir)
        except FileNotFoundError:
            return []
        return sorted(b for n in names if (b := parse_name(n)) is not None)

    def update_meta(self, **changes: object) -> dict:
        meta = self.read_meta()
        meta.update(changes)
        atomic_write(self.meta_path, json.dumps(meta, sort_keys=True).encode() + b"\n")
        return meta
