"""Read-only file descriptors of sealed segments, opened on demand.

A log of 10,000 segments must not hold 10,000 descriptors (a process has
1024 by default, and ZeroMQ needs some too): sealed segments are read
through this cache, which keeps at most `capacity` files open and closes
the one used longest ago when it needs another.
"""

from __future__ import annotations

import os
from collections import OrderedDict

DEFAULT_CAPACITY = 16


class FileCache:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._fds: OrderedDict[str, int] = OrderedDict()

    def fd(self, path: str) -> int:
        """A read-only descriptor of `path`, opened now if it is not open."""
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        fd = os.open(path, os.O_RDONLY)
        self._fds[path] = fd
        while len(self._fds) > self.capacity:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def forget(self, path: str) -> None:
        """Close `path`'s descriptor: the file is deleted, renamed or replaced."""
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    @property
    def open_count(self) -> int:
        return len(self._fds)

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])
