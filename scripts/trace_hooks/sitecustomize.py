"""Timestamps for scripts/lone_append_trace.py, loaded into every walnode
process through PYTHONPATH (Python imports `sitecustomize` at start).

Nothing here runs unless that script put this directory on PYTHONPATH and
set WALNODE_TRACE_DIR. It wraps the calls a lone append passes through
(zmq poll/send/recv, os.write/splice/fdatasync, a few walnode methods) so
each records (time.perf_counter_ns(), event) in memory, and writes the
events to WALNODE_TRACE_DIR/<role>-<pid>.tsv when the process exits.
perf_counter_ns is CLOCK_MONOTONIC, one clock for every process, so the
script can lay the processes' events on one time line. Wrapping, not
hooks in walnode's code: the product carries no tracing.
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import importlib.machinery
import os
import sys
import time

TRACE_DIR = os.environ.get("WALNODE_TRACE_DIR")


def _role() -> str:
    with open("/proc/self/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    for arg in argv:
        for role in (b"writer", b"front", b"compactor", b"replica"):
            if arg == b"actors." + role or arg.endswith(b"actors/" + role + b".py"):
                return role.decode()
    return "supervisor" if any(a.endswith(b"node.py") for a in argv) else "other"


if TRACE_DIR:
    ROLE = _role()
    events: list[tuple[int, str]] = []
    note = events.append
    now = time.perf_counter_ns

    def _dump() -> None:
        path = os.path.join(TRACE_DIR, f"{ROLE}-{os.getpid()}.tsv")
        with open(path, "w") as f:
            f.writelines(f"{t}\t{e}\n" for t, e in events)

    atexit.register(_dump)

    def around(name: str, fn, tag=None):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            suffix = "" if tag is None else f":{tag(args)}"
            note((now(), f"{name}>{suffix}"))
            out = fn(*args, **kwargs)
            note((now(), f"{name}<{suffix}"))
            return out

        return wrapped

    import zmq

    _poll = zmq.Poller.poll

    def poll(self, timeout=None):
        note((now(), "poll>"))
        out = _poll(self, timeout)
        fds = ",".join(str(s) if isinstance(s, int) else "z" for s, _ in out)
        note((now(), f"poll<:{fds}"))
        return out

    zmq.Poller.poll = poll
    _send, _send_multipart = zmq.Socket.send, zmq.Socket.send_multipart

    def more(args: tuple) -> str:  # a frame sent with SNDMORE: not the last of its message
        return "more" if len(args) > 2 and args[2] & zmq.SNDMORE else "last"

    zmq.Socket.send = around("send", _send, more)
    zmq.Socket.send_multipart = around("sendm", _send_multipart)
    _recv, _recv_multipart = zmq.Socket.recv, zmq.Socket.recv_multipart

    def recv_done(name, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)  # zmq.Again passes through unrecorded
            note((now(), name))
            return out

        return wrapped

    zmq.Socket.recv = recv_done("recv<", _recv)
    zmq.Socket.recv_multipart = recv_done("recvm<", _recv_multipart)
    os.write = around("write", os.write, lambda a: a[0])
    os.pwrite = around("pwrite", os.pwrite, lambda a: a[0])
    os.pread = around("pread", os.pread, lambda a: a[0])
    os.lseek = around("lseek", os.lseek, lambda a: a[0])
    os.fdatasync = around("fdatasync", os.fdatasync)
    if hasattr(os, "splice"):
        os.splice = around("splice", os.splice)

    # methods of walnode's own modules, wrapped once the module has run
    # (the roles' own modules run as __main__, out of reach of this finder:
    # their steps are read from the calls above)
    METHODS = {"wal.datadir": [("DataDir", "check_identity")]}

    class _Patcher(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname not in METHODS:
                return None
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is None or spec.loader is None:
                return spec
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                for cls_name, meth in METHODS[fullname]:
                    cls = getattr(module, cls_name, None)
                    if cls is None or not hasattr(cls, meth):
                        note((now(), f"untraced:{cls_name}.{meth}"))
                        continue
                    setattr(cls, meth, around(f"{cls_name}.{meth}", getattr(cls, meth)))

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Patcher())
