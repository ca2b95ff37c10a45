"""File-system steps that durability depends on, written once."""

from __future__ import annotations

import os


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


def atomic_write(path: str, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves the old file or the new one.

    Temp file, fsync, rename over, fsync the directory (in that order).
    """
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (regular files may write short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
