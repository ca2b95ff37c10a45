"""A disk that loses power: the model behind tests/test_powerloss.py and
`walctl crashtest --power-loss`.

It replays a trace written by wal/fstrace.py (every change walnode's
processes made under a data directory, in one global order) and keeps two
views of the directory tree: what the page cache holds, and what is durable.
A file's bytes become durable when that file is fsynced; a directory's
entries (creates, renames, deletes, mkdirs) when that directory is fsynced,
as POSIX promises and no more. Until then a change lives only in the cache.

A power cut keeps the durable view plus, **for each file on its own**, a
prefix of its unsynced writes taken page by page (4 KiB pages, the last page
kept possibly torn: only its first bytes), and **for each directory on its
own**, a prefix of its unsynced entry changes. Files and directories do not
wait for each other: the model can keep a new segment's directory entry and
lose the previous segment's unsynced tail, as ext4 can (its journal commits
a directory entry while another file's delayed-allocation data is still in
memory). A `Keep` says what survives; `Disk.extremes` gives the corner
cases at a cut and `random_keep` a random mix.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any

import msgpack

PAGE = 4096
Node = tuple[str, Any]  # ("file", inode number) or ("dir", path)


@dataclass
class File:
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""
    pending: list[tuple] = field(default_factory=list)  # writes and truncates since the last sync

    def units(self) -> list[tuple]:
        """The unsynced changes as the disk may persist them: writes split at
        page boundaries, in the order they were made."""
        out = []
        for op in self.pending:
            if op[0] != "write":
                out.append(op)
                continue
            _, pos, chunk = op
            at = 0
            while at < len(chunk) or not chunk:
                room = PAGE - (pos + at) % PAGE
                out.append(("write", pos + at, chunk[at : at + room]))
                at += room
                if not chunk:
                    break
        return out


@dataclass
class Dir:
    names: dict[str, Node] = field(default_factory=dict)
    durable: dict[str, Node] = field(default_factory=dict)
    pending: list[tuple] = field(default_factory=list)


@dataclass
class Keep:
    """What one power cut keeps of the unsynced changes: per inode, how many
    page units (and the bytes kept of the last one, None for all of it); per
    directory path, how many entry changes. Anything not named: nothing."""

    files: dict[int, tuple[int, int | None]] = field(default_factory=dict)
    dirs: dict[str, int] = field(default_factory=dict)
    how: str = "durable only"


def read_trace(path: str) -> list[list]:
    with open(path, "rb") as f:
        return list(msgpack.Unpacker(f, raw=False))


def _apply_file_op(data: bytearray, op: tuple, tear: int | None = None) -> None:
    if op[0] == "write":
        _, pos, chunk = op
        if tear is not None:
            chunk = chunk[:tear]
        if len(data) < pos:
            data.extend(bytes(pos - len(data)))
        data[pos : pos + len(chunk)] = chunk
    else:  # truncate
        length = op[1]
        del data[length:]
        if len(data) < length:
            data.extend(bytes(length - len(data)))


def _apply_dir_op(names: dict[str, Node], op: tuple) -> None:
    if op[0] == "set":
        names[op[1]] = op[2]
    elif op[0] == "del":
        names.pop(op[1], None)
    else:  # rename within one directory: both halves or neither
        node = names.pop(op[1])
        names[op[2]] = node


class Disk:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.files: dict[int, File] = {}
        self.dirs: dict[str, Dir] = {self.root: Dir()}
        self.fds: dict[tuple[int, int], Node] = {}

    # -- replaying the trace ----------------------------------------------

    def apply(self, rec: list) -> None:
        """Apply one trace record (records that are not file-system changes are ignored)."""
        kind = rec[0]
        if kind == "open":
            self._open(rec[1], rec[2], rec[3], rec[4])
        elif kind == "close":
            self.fds.pop((rec[1], rec[2]), None)
        elif kind == "dup":  # a second descriptor of the same open file
            self.fds[(rec[1], rec[3])] = self.fds[(rec[1], rec[2])]
        elif kind == "write":
            self._file_op(self.fds[(rec[1], rec[2])], ("write", rec[3], rec[4]))
        elif kind == "truncate":
            self._file_op(self.fds[(rec[1], rec[2])], ("truncate", rec[3]))
        elif kind == "sync":
            self._sync(self.fds[(rec[1], rec[2])])
        elif kind == "rename":
            self._rename(rec[2], rec[3])
        elif kind == "unlink":
            d, name = self._parent(rec[2])
            d.names.pop(name)
            d.pending.append(("del", name))
        elif kind == "mkdir":
            d, name = self._parent(rec[2])
            self.dirs[rec[2]] = Dir()
            d.names[name] = ("dir", rec[2])
            d.pending.append(("set", name, ("dir", rec[2])))

    def _parent(self, path: str) -> tuple[Dir, str]:
        return self.dirs[os.path.dirname(path)], os.path.basename(path)

    def _open(self, pid: int, fd: int, path: str, flags: int) -> None:
        if flags & os.O_DIRECTORY:
            self.fds[(pid, fd)] = ("dir", path)
            return
        d, name = self._parent(path)
        node = d.names.get(name)
        if node is None:
            assert flags & os.O_CREAT, f"open of missing {path} without O_CREAT"
            ino = len(self.files)
            self.files[ino] = File()
            node = ("file", ino)
            d.names[name] = node
            d.pending.append(("set", name, node))
        elif flags & os.O_TRUNC:
            self._file_op(node, ("truncate", 0))
        self.fds[(pid, fd)] = node

    def _file_op(self, node: Node, op: tuple) -> None:
        f = self.files[node[1]]
        _apply_file_op(f.data, op)
        f.pending.append(op)

    def _sync(self, node: Node) -> None:
        if node[0] == "dir":
            d = self.dirs[node[1]]
            d.durable = dict(d.names)
            d.pending.clear()
        else:
            f = self.files[node[1]]
            f.durable = bytes(f.data)
            f.pending.clear()

    def _rename(self, src: str, dst: str) -> None:
        sd, sname = self._parent(src)
        dd, dname = self._parent(dst)
        node = sd.names.pop(sname)
        assert node[0] == "file", "walnode renames files only"
        dd.names[dname] = node
        if sd is dd:
            sd.pending.append(("rename", sname, dname))
        else:
            sd.pending.append(("del", sname))
            dd.pending.append(("set", dname, node))

    # -- cutting the power -------------------------------------------------

    def unsynced(self) -> tuple[dict[int, list[tuple]], dict[str, int]]:
        """Page units not yet durable per inode, entry changes per directory."""
        files = {ino: f.units() for ino, f in self.files.items() if f.pending}
        dirs = {path: len(d.pending) for path, d in self.dirs.items() if d.pending}
        return files, dirs

    def extremes(self) -> list[Keep]:
        """The corner cases of a cut now: nothing unsynced kept; every
        directory change kept but no file data (a new file's entry durable, an
        old file's unsynced tail gone); every file's data kept but no
        directory change."""
        files, dirs = self.unsynced()
        every_unit: dict[int, tuple[int, int | None]] = {
            ino: (len(u), None) for ino, u in files.items()
        }
        return [
            Keep(),
            Keep(dirs=dict(dirs), how="directories kept, file data lost"),
            Keep(files=every_unit, how="file data kept, directories lost"),
        ]

    def crash_state(self, keep: Keep | None = None) -> dict[str, bytes | None]:
        """The tree after a power cut now that keeps `keep` of the unsynced
        changes. Returns {relative path: bytes, or None for a directory}."""
        keep = keep or Keep()
        dirs = {}
        for path, d in self.dirs.items():
            names = dict(d.durable)
            for op in d.pending[: keep.dirs.get(path, 0)]:
                _apply_dir_op(names, op)
            dirs[path] = names

        def content(ino: int) -> bytes:
            f = self.files[ino]
            count, tear = keep.files.get(ino, (0, None))
            if not count:
                return f.durable
            data = bytearray(f.durable)
            units = f.units()[:count]
            for i, op in enumerate(units):
                _apply_file_op(data, op, tear if i == len(units) - 1 else None)
            return bytes(data)

        return self._tree(dirs, content)

    def live_state(self) -> dict[str, bytes | None]:
        """What the page cache holds: the tree as the processes saw it."""
        dirs = {p: d.names for p, d in self.dirs.items()}
        return self._tree(dirs, lambda ino: bytes(self.files[ino].data))

    def _tree(self, dirs: dict, content) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        todo = [self.root]
        while todo:
            path = todo.pop()
            for name, (kind, ref) in dirs[path].items():
                rel = os.path.relpath(os.path.join(path, name), self.root)
                if kind == "dir":
                    out[rel] = None
                    todo.append(ref)
                else:
                    out[rel] = content(ref)
        return out


def random_keep(disk: Disk, rng: random.Random) -> Keep:
    """A random cut: for each file a random prefix of its page units (the
    last one torn at a random byte, half of the time), for each directory a
    random prefix of its entry changes, each chosen on its own."""
    files, dirs = disk.unsynced()
    keep = Keep(how="random per file and per directory")
    for ino, units in files.items():
        count = rng.randint(0, len(units))
        last = units[count - 1] if count else None
        tear = None
        if last is not None and last[0] == "write" and rng.random() < 0.5:
            tear = rng.randint(0, len(last[2]))
        keep.files[ino] = (count, tear)
    keep.dirs = {path: rng.randint(0, n) for path, n in dirs.items()}
    return keep


def materialize(tree: dict[str, bytes | None], dest: str) -> None:
    os.makedirs(dest)
    for rel in sorted(tree, key=lambda r: r.count(os.sep)):
        path = os.path.join(dest, rel)
        if tree[rel] is None:
            os.makedirs(path, exist_ok=True)
    for rel, data in tree.items():
        if data is not None:
            with open(os.path.join(dest, rel), "wb") as f:
                f.write(data)


def read_tree(root: str) -> dict[str, bytes | None]:
    """The real directory, in the same shape as Disk.live_state()."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for fn in filenames:
            with open(os.path.join(dirpath, fn), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, fn), root)] = f.read()
    return out
