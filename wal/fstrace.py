"""A trace of every file-system change under one directory, for power-loss tests.

With `WALNODE_FS_TRACE=<trace file>` and `WALNODE_FS_TRACE_ROOT=<data dir>`
in its environment, a process records each change it makes under the root
(open with create or truncate, dup, write, truncate, fsync/fdatasync,
rename, unlink, mkdir) to the trace file, after the change is made and before the
call returns. Every walnode process appends to the same file, one
`write` per record with O_APPEND, so the trace is one global order that
respects causality: an fsync is in the trace before any reply it allowed.

wal/powerloss.py replays such a trace into a model of a disk that keeps
only what was fsynced, cuts the power at chosen points and checks recovery.
The hooks wrap functions of the `os` module in this process only; nothing
is recorded for files outside the root. Unset, nothing is installed.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack

TRACE_ENV = "WALNODE_FS_TRACE"
ROOT_ENV = "WALNODE_FS_TRACE_ROOT"

_real: dict[str, Any] = {}
_fds: dict[int, str] = {}  # traced descriptors -> path
_trace_fd = -1
_root = ""


def _emit(*rec: object) -> None:
    _real["write"](_trace_fd, msgpack.packb(rec, use_bin_type=True))


def _under_root(path: str | bytes | int) -> str | None:
    if isinstance(path, int):
        return None
    p = os.path.abspath(os.fsdecode(path))
    return p if p == _root or p.startswith(_root + os.sep) else None


def _open(path, flags, mode=0o777, *, dir_fd=None):
    fd = _real["open"](path, flags, mode, dir_fd=dir_fd)
    p = _under_root(path) if dir_fd is None else None
    if p is not None:
        _fds[fd] = p
        _emit("open", os.getpid(), fd, p, flags)
    return fd


def _close(fd):
    # recorded before the close: once it is closed, another thread's open may
    # take the same number (the writer's sync thread closes its duplicates),
    # and that open's record must come after this one
    if _fds.pop(fd, None) is not None:
        _emit("close", os.getpid(), fd)
    _real["close"](fd)


def _dup(fd):
    new = _real["dup"](fd)
    p = _fds.get(fd)
    if p is not None:  # the same open file: what is synced through one is through both
        _fds[new] = p
        _emit("dup", os.getpid(), fd, new)
    return new


def _write(fd, data):
    if fd not in _fds:
        return _real["write"](fd, data)
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    n = _real["write"](fd, data)
    _emit("write", os.getpid(), fd, pos, bytes(memoryview(data)[:n]))
    return n


def _pwrite(fd, data, offset):
    n = _real["pwrite"](fd, data, offset)
    if fd in _fds:
        _emit("write", os.getpid(), fd, offset, bytes(memoryview(data)[:n]))
    return n


def _ftruncate(fd, length):
    _real["ftruncate"](fd, length)
    if fd in _fds:
        _emit("truncate", os.getpid(), fd, length)


def _syncer(name: str):
    real = _real[name]

    def sync(fd):
        real(fd)
        if fd in _fds:
            _emit("sync", os.getpid(), fd)

    return sync


def _renamer(name: str):
    real = _real[name]

    def rename(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        s, d = _under_root(src), _under_root(dst)
        if s is not None and d is not None:
            _emit("rename", os.getpid(), s, d)

    return rename


def _unlinker(name: str):
    real = _real[name]

    def unlink(path, *, dir_fd=None):
        real(path, dir_fd=dir_fd)
        p = _under_root(path)
        if p is not None:
            _emit("unlink", os.getpid(), p)

    return unlink


def _mkdir(path, mode=0o777, *, dir_fd=None):
    _real["mkdir"](path, mode, dir_fd=dir_fd)
    p = _under_root(path)
    if p is not None:
        _emit("mkdir", os.getpid(), p)


def install(trace_path: str, root: str) -> None:
    """Start recording this process's changes under `root` to `trace_path`."""
    global _trace_fd, _root
    if _real:
        return
    names = ["open", "close", "dup", "write", "pwrite", "ftruncate", "fsync", "fdatasync"]
    names += ["rename", "replace", "remove", "unlink", "mkdir"]
    _real.update({n: getattr(os, n) for n in names})
    _root = os.path.abspath(root)
    _trace_fd = _real["open"](trace_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.open, os.close, os.write, os.pwrite = _open, _close, _write, _pwrite
    os.dup = _dup
    os.ftruncate, os.mkdir = _ftruncate, _mkdir
    os.fsync, os.fdatasync = _syncer("fsync"), _syncer("fdatasync")
    os.rename, os.replace = _renamer("rename"), _renamer("replace")
    os.remove, os.unlink = _unlinker("remove"), _unlinker("unlink")


def install_from_env() -> None:
    trace = os.environ.get(TRACE_ENV)
    if trace:
        install(trace, os.environ[ROOT_ENV])
