"""File-system steps that durability depends on, written once."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Callable, Iterator

from wal.errors import DiskFull

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def fsync_dir(path: str) -> None:
    """Make a directory's entries (creates, renames, deletes) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str) -> None:
    """Create `path` and any missing parents, each made durable in its parent:
    a new directory's entry is only on disk once its parent is fsynced."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    make_dirs(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    fsync_dir(parent)


def atomic_write(path: str, data: bytes, *, sync_dir: bool = True) -> None:
    """Replace `path` with `data` so a crash leaves the old file or the new one.

    Temp file, fsync, rename over, fsync the directory (in that order).
    sync_dir=False: the caller fsyncs the directory itself, right after.
    """
    replace_durably(write_temp(path, data), path, sync_dir=sync_dir)


def write_temp(path: str, data: bytes) -> str:
    """The first half of `atomic_write`: `data` in `path`'s temp file, fsynced
    (DiskFull if it does not fit, the temp file removed). Returns its path."""
    tmp = path + ".tmp"
    with disk_full_undone(tmp):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    return tmp


def replace_durably(tmp: str, path: str, *, sync_dir: bool = True) -> None:
    """The second half of `atomic_write`: rename `tmp` over `path`, fsync the
    directory (sync_dir=False: the caller does, right after)."""
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (regular files may write short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextlib.contextmanager
def disk_full_undone(temp_path: str) -> Iterator[None]:
    """Writing a new file (`temp_path`) that nothing refers to yet: if the
    disk is full, remove what was written and raise DiskFull instead."""
    try:
        yield
    except OSError as err:
        if err.errno not in DISK_FULL_ERRNOS:
            raise
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_path)
        raise DiskFull(f"no space left writing {temp_path}: {err.strerror}") from None


_SYNC_FILE_RANGE_WAIT_BEFORE, _SYNC_FILE_RANGE_WRITE, _SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4


def sync_range(fd: int, offset: int, length: int, *, wait: bool) -> None:
    """sync_file_range(2): start the writeback of the range (and with `wait`,
    wait for it). Not a durability step (an fsync is): it keeps a large write
    from reaching the disk's queue all at once. A no-op where libc has none;
    a failure is raised, since a writeback error it reports is not reported
    again to the fsync after it."""
    if _sync_file_range is None:
        return
    flags = _SYNC_FILE_RANGE_WRITE
    if wait:
        flags |= _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WAIT_AFTER
    if _sync_file_range(fd, offset, length, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sync_file_range: {os.strerror(err)}")


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_sync_file_range = _libc_sync_file_range()
