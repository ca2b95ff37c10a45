"""A disk that loses power: the model behind tests/test_powerloss.py.

It replays a trace written by wal/fstrace.py (every change walnode's
processes made under a data directory, in one global order) and keeps two
views of the directory tree: what the page cache holds, and what is durable.
A file's bytes become durable when it is fsynced; a directory's entries
(creates, renames, deletes, mkdirs) when the directory is fsynced, as POSIX
promises and no more. Until then a change lives only in the page cache.

Cutting the power at a point of the trace keeps the durable view plus, at
most, an in-order prefix of the changes not yet synced, the last of which
may be torn (only some of its bytes reach the disk): the states a journaling
file system in ordered mode can be left in.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import msgpack

Node = tuple[str, object]  # ("file", inode number) or ("dir", path)


@dataclass
class File:
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""
    pending: list[tuple[int, tuple]] = field(default_factory=list)  # (seq, op)


@dataclass
class Dir:
    names: dict[str, Node] = field(default_factory=dict)
    durable: dict[str, Node] = field(default_factory=dict)
    pending: list[tuple[int, tuple]] = field(default_factory=list)


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
        self.seq = 0

    # -- replaying the trace ----------------------------------------------

    def apply(self, rec: list) -> None:
        """Apply one trace record (records that are not file-system changes are ignored)."""
        self.seq += 1
        kind = rec[0]
        if kind == "open":
            self._open(rec[1], rec[2], rec[3], rec[4])
        elif kind == "close":
            self.fds.pop((rec[1], rec[2]), None)
        elif kind == "write":
            self._file_op(rec[1], rec[2], ("write", rec[3], rec[4]))
        elif kind == "truncate":
            self._file_op(rec[1], rec[2], ("truncate", rec[3]))
        elif kind == "sync":
            self._sync(self.fds[(rec[1], rec[2])])
        elif kind == "rename":
            self._rename(rec[2], rec[3])
        elif kind == "unlink":
            d, name = self._parent(rec[2])
            d.names.pop(name)
            d.pending.append((self.seq, ("del", name)))
        elif kind == "mkdir":
            d, name = self._parent(rec[2])
            self.dirs[rec[2]] = Dir()
            d.names[name] = ("dir", rec[2])
            d.pending.append((self.seq, ("set", name, ("dir", rec[2]))))

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
            d.pending.append((self.seq, ("set", name, node)))
        elif flags & os.O_TRUNC:
            self._file_op_node(node, ("truncate", 0))
        self.fds[(pid, fd)] = node

    def _file_op(self, pid: int, fd: int, op: tuple) -> None:
        self._file_op_node(self.fds[(pid, fd)], op)

    def _file_op_node(self, node: Node, op: tuple) -> None:
        f = self.files[node[1]]
        _apply_file_op(f.data, op)
        f.pending.append((self.seq, op))

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
            sd.pending.append((self.seq, ("rename", sname, dname)))
        else:
            sd.pending.append((self.seq, ("del", sname)))
            dd.pending.append((self.seq, ("set", dname, node)))

    # -- cutting the power -------------------------------------------------

    def unsynced(self) -> list[tuple[int, str, object, tuple]]:
        """Every change not yet durable, in trace order: (seq, kind, key, op)."""
        out = [(s, "file", ino, op) for ino, f in self.files.items() for s, op in f.pending]
        out += [(s, "dir", path, op) for path, d in self.dirs.items() for s, op in d.pending]
        out.sort(key=lambda c: c[0])
        return out

    def crash_state(self, keep: int = 0, tear: int | None = None) -> dict[str, bytes | None]:
        """The tree after a power cut now: durable state plus the first `keep`
        unsynced changes, the last of them cut to `tear` bytes if it is a write.
        Returns {relative path: bytes, or None for a directory}."""
        changes = self.unsynced()[:keep]
        dirs = {p: dict(d.durable) for p, d in self.dirs.items()}
        files = {ino: bytearray(f.durable) for ino, f in self.files.items()}
        for i, (_, kind, key, op) in enumerate(changes):
            if kind == "dir":
                _apply_dir_op(dirs[key], op)
            else:
                last = i == len(changes) - 1
                _apply_file_op(files[key], op, tear if last else None)
        return self._tree(dirs, {i: bytes(b) for i, b in files.items()})

    def live_state(self) -> dict[str, bytes | None]:
        """What the page cache holds: the tree as the processes saw it."""
        dirs = {p: d.names for p, d in self.dirs.items()}
        return self._tree(dirs, {i: bytes(f.data) for i, f in self.files.items()})

    def _tree(self, dirs: dict, files: dict) -> dict[str, bytes | None]:
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
                    out[rel] = files[ref]
        return out


def random_cut(disk: Disk, rng: random.Random) -> tuple[dict[str, bytes | None], str]:
    """A power cut now, chosen at random: half the time every unsynced change
    is dropped; otherwise an in-order prefix survives with its last write torn."""
    pending = disk.unsynced()
    if not pending or rng.random() < 0.5:
        return disk.crash_state(), "drop all unsynced"
    keep = rng.randint(1, len(pending))
    last_op = pending[keep - 1][3]
    tear = rng.randint(0, len(last_op[2])) if last_op[0] == "write" else None
    return disk.crash_state(keep, tear), f"keep {keep}/{len(pending)} unsynced, tear at {tear}"


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
