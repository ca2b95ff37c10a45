"""The compactor's state on disk: an sqlite database (stdlib sqlite3).

    DIR/state/state.sqlite        the database (and sqlite's -wal and -shm beside it)

The state machine (wal/statemachine.py) applies entries to an overlay in
memory; the compactor commits the overlay here in one transaction now and
then, together with the offset it reached (etcd's backend and consistent
index, in one atomic commit). A restart opens the database and replays only
the log after that offset, instead of rebuilding the whole state in memory.

Schema (docs/FORMAT.md, "The state store"):

    kv(key TEXT PRIMARY KEY, value TEXT, crc INTEGER) WITHOUT ROWID   the state
    rewritten(key TEXT PRIMARY KEY) WITHOUT ROWID         keys certain since damaged[-1]
    damaged(offset INTEGER PRIMARY KEY, crc INTEGER)      offsets that could not be applied
    meta(name TEXT PRIMARY KEY, value, crc INTEGER) WITHOUT ROWID   format, applied_offset,
                                                          last_crc, last_epoch

sqlite's pages carry no checksum, so every row of kv, damaged and meta
carries a CRC-32 of its text (`row_crc`), checked whenever it is read: rot
in the file is StoreDamaged (the store rebuilt), never an answer. A miss in
kv checks the rows on either side of the key too (a rotted key sits where
the key was).

`applied_offset`, `last_crc` and `last_epoch` are the store's Mark: every
entry below applied_offset is folded in, and the entry at applied_offset - 1
had a payload with that CRC-32 (NULL: it could not be read) and that epoch
(NULL: a single node). The compactor checks the Mark against the log before
it trusts the store (a log cut under it, or another log, is rebuilt from,
never served).

journal_mode=WAL, synchronous=FULL: a commit is durable when it returns, and
a crash or a power cut leaves the last commit or an earlier one, never a mix.

While the state is small (MIRROR_MAX_KEYS keys, MIRROR_MAX_CHARS characters
of keys and values), the store also holds it in memory, `mirror`: built by
the first whole read (`chunks`), kept equal to the kv table by every commit,
and dropped once the state outgrows it. A whole read then comes from memory:
a snapshot, the one whole read, no longer reads 10,000 rows back and checks
their CRCs after committing them (BENCHMARKS.md, the snapshot row). What it
holds came from rows whose CRCs were checked, or from the entries folded in.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from wal.errors import DiskFull, WalError
from wal.fsutil import fsync_dir, make_dirs
from wal.record import crc32  # zlib's CRC-32, computed by ISA-L

FORMAT = 1


def row_crc(*fields: object) -> int:
    """CRC-32 of a row's fields as text, NUL-separated (None as empty)."""
    return crc32("\x00".join("" if f is None else str(f) for f in fields).encode())


def _kv_crc(key: str, value: str) -> int:
    return crc32(f"{key}\x00{value}".encode())  # row_crc(key, value), inlined: per row


STORE_NAME = "state.sqlite"
SUFFIXES = ("", "-wal", "-shm")  # the database and sqlite's files beside it
CACHE_KIB = 65536  # sqlite's page cache: a commit of many keys rereads fewer pages
ITER_ROWS = 65536  # rows fetched at a time when the whole state is read
# The state held in memory beside the table while it is at most this big (a
# Python dict of 200,000 short keys and values takes ~40 MB).
MIRROR_MAX_KEYS = 200_000
MIRROR_MAX_CHARS = 32 << 20

SCHEMA = """
CREATE TABLE kv(key TEXT PRIMARY KEY, value TEXT NOT NULL, crc INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE rewritten(key TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE damaged(offset INTEGER PRIMARY KEY, crc INTEGER NOT NULL);
CREATE TABLE meta(name TEXT PRIMARY KEY, value, crc INTEGER NOT NULL) WITHOUT ROWID;
"""


class StoreDamaged(WalError):
    """The store cannot be read (sqlite reports it malformed, or it is not a
    walnode store): it is removed and rebuilt from a snapshot and the log."""


class StoreFailed(WalError):
    """A step on the store failed for another reason (an I/O error): nothing
    changed (sqlite rolled it back); the caller may retry later."""


_DAMAGE_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
_FULL_CODE = 13  # SQLITE_FULL


@dataclass(frozen=True)
class Mark:
    """Where a state stands in the log: every entry below `offset` applied,
    and what the entry at offset - 1 was (its payload's CRC-32, None if it
    could not be read or offset is 0; its epoch, None on a single node)."""

    offset: int = 0
    crc: int | None = None
    epoch: int | None = None


@dataclass
class Changes:
    """What a state machine changed since its last commit (StateMachine.cut)."""

    values: dict[str, str | None]  # key -> value; None: deleted
    rewritten: set[str]  # keys set or deleted since the newest damaged offset
    rewritten_reset: bool  # a damaged entry since the last commit: the stored rewritten go
    damaged: list[int] = field(default_factory=list)  # damaged offsets since the last commit
    mark: Mark = Mark()


def store_path(state_dir: str) -> str:
    return os.path.join(state_dir, STORE_NAME)


def _damaged(err: sqlite3.Error, path: str) -> WalError:
    """sqlite's error as the library's: damage, a full disk, or another failure."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _DAMAGE_CODES:
        return StoreDamaged(f"the state store {path} is damaged: {err}")
    if code is not None and code & 0xFF == _FULL_CODE:
        return DiskFull(f"no space left committing the state store {path}: {err}")
    return StoreFailed(f"the state store {path} failed: {err}")


class StateStore:
    """One open store. Every method raises StoreDamaged for what sqlite reports
    as damage (OSError for the disk's own errors, as elsewhere)."""

    def __init__(
        self, conn: sqlite3.Connection, path: str, mark: Mark, damaged: list[int], created: bool
    ) -> None:
        self.conn, self.path, self.mark, self.damaged = conn, path, mark, damaged
        self.created = created  # open made it: there was no store
        # the kv table in memory while it is small (None: not held), and its characters
        self.mirror: dict[str, str] | None = None
        self._mirror_chars = 0

    @classmethod
    def open(cls, state_dir: str) -> StateStore:
        """Open the store in `state_dir`, creating an empty one (Mark at 0) if
        there is none."""
        make_dirs(state_dir)
        path = store_path(state_dir)
        created = not os.path.exists(path)
        try:
            conn = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as err:
            raise StoreDamaged(f"the state store {path} cannot be opened: {err}") from None
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StoreDamaged(f"{path}: sqlite could not use its WAL journal ({mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            if created:  # a cut before the meta rows commit leaves a store open refuses
                conn.executescript(SCHEMA)
                with _transaction(conn):
                    _write_meta(conn, [("format", FORMAT)])
                    _write_mark(conn, Mark())
                fsync_dir(state_dir)  # the new file's entry (sqlite syncs its -wal's own)
            meta = {}
            for name, value, crc in conn.execute("SELECT name, value, crc FROM meta"):
                if row_crc(name, value) != crc:
                    raise StoreDamaged(f"{path}: its meta row {name!r} fails its CRC")
                meta[name] = value
            if meta.get("format") != FORMAT:
                raise StoreDamaged(f"{path} has format {meta.get('format')!r}, not {FORMAT}")
            mark = Mark(meta["applied_offset"], meta.get("last_crc"), meta.get("last_epoch"))
            if not (isinstance(mark.offset, int) and mark.offset >= 0):
                raise StoreDamaged(f"{path}: applied_offset is {mark.offset!r}")
            damaged = []
            for offset, crc in conn.execute("SELECT offset, crc FROM damaged ORDER BY offset"):
                if row_crc(offset) != crc:
                    raise StoreDamaged(f"{path}: its damaged row {offset} fails its CRC")
                damaged.append(offset)
        except (sqlite3.Error, KeyError) as err:
            conn.close()
            # at open any failure is taken as damage: the store is only a cache of the log
            raise StoreDamaged(f"the state store {path} cannot be used: {err!r}") from None
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, mark, damaged, created)

    @staticmethod
    def remove(state_dir: str) -> list[str]:
        """Delete the store's files (a damaged or mismatched store), durably."""
        removed = []
        for suffix in SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                os.remove(store_path(state_dir) + suffix)
                removed.append(STORE_NAME + suffix)
        if removed:
            fsync_dir(state_dir)
        return removed

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    # -- reading -------------------------------------------------------------

    def get(self, key: str) -> str | None:
        """`key`'s value (None: not set), its row's CRC checked; on a miss the
        rows beside where it would be are checked too."""
        try:
            row = self.conn.execute("SELECT value, crc FROM kv WHERE key = ?", (key,)).fetchone()
            if row is not None:
                if _kv_crc(key, row[0]) != row[1]:
                    raise StoreDamaged(f"{self.path}: the row of key {key!r} fails its CRC")
                return row[0]
            for sql in (_AFTER, _BEFORE):
                near = self.conn.execute(sql, (key,)).fetchone()
                if near is not None and _kv_crc(near[0], near[1]) != near[2]:
                    raise StoreDamaged(f"{self.path}: a row beside key {key!r} fails its CRC")
        except sqlite3.Error as err:
            raise _damaged(err, self.path) from None
        return None

    def is_rewritten(self, key: str) -> bool:
        try:
            sql = "SELECT 1 FROM rewritten WHERE key = ?"
            return self.conn.execute(sql, (key,)).fetchone() is not None
        except sqlite3.Error as err:
            raise _damaged(err, self.path) from None

    def rewritten_keys(self) -> set[str]:
        try:
            return {r[0] for r in self.conn.execute("SELECT key FROM rewritten")}
        except sqlite3.Error as err:
            raise _damaged(err, self.path) from None

    def chunks(self) -> Iterator[Sequence[tuple[str, str]] | Mapping[str, str]]:
        """The whole state, in chunks of distinct keys (the caller does not
        commit meanwhile): the mirror as one, or ITER_ROWS rows at a time in
        key order, as of one read transaction; a read to the end keeps what
        it read as the mirror if the state is small."""
        if self.mirror is not None:
            yield self.mirror
            return
        kept: dict[str, str] | None = {}
        chars = 0
        try:
            cursor = self.conn.execute("SELECT key, value, crc FROM kv")
            while rows := cursor.fetchmany(ITER_ROWS):
                if any(_kv_crc(k, v) != c for k, v, c in rows):
                    raise StoreDamaged(f"{self.path}: a row of its state fails its CRC")
                chunk = [(k, v) for k, v, _ in rows]
                if kept is not None:
                    kept.update(chunk)
                    chars += sum(len(k) + len(v) for k, v in chunk)
                    if len(kept) > MIRROR_MAX_KEYS or chars > MIRROR_MAX_CHARS:
                        kept = None
                yield chunk
        except sqlite3.Error as err:
            raise _damaged(err, self.path) from None
        self.mirror, self._mirror_chars = kept, (chars if kept is not None else 0)

    def _fold_into_mirror(self, values: dict[str, str | None]) -> None:
        """What a commit wrote, into the mirror (dropped once the state outgrows it)."""
        mirror = self.mirror
        if mirror is None:
            return
        get = mirror.get
        chars = self._mirror_chars
        chars -= sum(len(k) + len(old) for k in values if (old := get(k)) is not None)
        if None in values.values():
            for key in [k for k, v in values.items() if v is None]:
                mirror.pop(key, None)
            values = {k: v for k, v in values.items() if v is not None}
        mirror.update(values)  # type: ignore[arg-type]  # no None left in it
        chars += sum(map(len, values)) + sum(map(len, values.values()))  # type: ignore[arg-type]
        if len(mirror) > MIRROR_MAX_KEYS or chars > MIRROR_MAX_CHARS:
            self.mirror, chars = None, 0
        self._mirror_chars = chars

    # -- writing -------------------------------------------------------------

    def commit(self, changes: Changes) -> None:
        """Fold `changes` in and move the Mark, in one transaction."""
        sets = [(k, v, _kv_crc(k, v)) for k, v in changes.values.items() if v is not None]
        deletes = [(k,) for k, v in changes.values.items() if v is None]
        try:
            with _transaction(self.conn):
                self.conn.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", sets)
                self.conn.executemany("DELETE FROM kv WHERE key = ?", deletes)
                self._put_damage(changes.rewritten, changes.rewritten_reset, changes.damaged)
                _write_mark(self.conn, changes.mark)
        except sqlite3.Error as err:
            raise _damaged(err, self.path) from None
        self.mark = changes.mark
        self.damaged.extend(changes.damaged)
        self._fold_into_mirror(changes.values)

    def replace(
        self,
        state: Iterable[tuple[str, str]],
        damaged: Iterable[int],
        rewritten: Iterable[str],
        mark: Mark,
    ) -> None:
        """Replace the whole state (a snapshot loaded into the store), in one transaction."""
        damaged = list(damaged)
        self.mirror = None  # the next whole read builds it again
        try:
            with _transaction(self.conn):
                for table in ("kv", "rewritten", "damaged"):
                    self.conn.execute(f"DELETE FROM {table}")
                rows = ((k, v, _kv_crc(k, v)) for k, v in state)
                self.conn.executemany("INSERT INTO kv VALUES (?, ?, ?)", rows)
                self._put_damage(rewritten, False, damaged)
                _write_mark(self.conn, mark)
        except sqlite3.Error as err:
            raise _damaged(err, self.path) from None
        self.mark, self.damaged = mark, damaged

    def _put_damage(self, rewritten: Iterable[str], reset: bool, damaged: list[int]) -> None:
        if reset:
            self.conn.execute("DELETE FROM rewritten")
        self.conn.executemany(
            "INSERT OR IGNORE INTO rewritten VALUES (?)", ((k,) for k in rewritten)
        )
        rows = ((o, row_crc(o)) for o in damaged)
        self.conn.executemany("INSERT INTO damaged VALUES (?, ?)", rows)


def _write_mark(conn: sqlite3.Connection, mark: Mark) -> None:
    _write_meta(
        conn, [("applied_offset", mark.offset), ("last_crc", mark.crc), ("last_epoch", mark.epoch)]
    )


def _write_meta(conn: sqlite3.Connection, rows: list[tuple[str, object]]) -> None:
    rows_crc = [(name, value, row_crc(name, value)) for name, value in rows]
    conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?, ?)", rows_crc)


_AFTER = "SELECT key, value, crc FROM kv WHERE key > ? ORDER BY key LIMIT 1"
_BEFORE = "SELECT key, value, crc FROM kv WHERE key < ? ORDER BY key DESC LIMIT 1"


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back if anything in it raises."""
    if not conn.in_transaction:
        conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if conn.in_transaction:
        conn.execute("COMMIT")
