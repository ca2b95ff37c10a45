"""The state machine every walnode replica folds its log into.

set KEY=VALUE   KEY has no spaces and no '='; VALUE is the rest (may be empty)
del KEY         removes KEY
anything else   stays in the log and leaves the state as it is

An entry that cannot be read (its record fails its CRC, or walctl repair
marked it lost) could have been any of these: it could have set or deleted
any key. From it on, every key's value is uncertain until a readable entry
sets or deletes that key again; `uncertain` says which damaged offsets a
key's value may depend on.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from wal.statestore import Changes, Mark

if TYPE_CHECKING:
    from wal.statestore import StateStore

# apply_run looks for these bytes as ints: `b" " in key` first tries b" " as an
# int, and formats and clears a TypeError for every entry (~120 ns)
SPACE, EQUALS = ord(" "), ord("=")


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class StateMachine:
    """The state in memory, or (with a `store`, wal/statestore.py) the
    changes since the store's last commit over the store: `state` then maps a
    deleted key to None, reads (`get`, `uncertain`) look there first, then in
    the store, and `changes` hands them over for the store's next commit."""

    def __init__(
        self,
        state: dict[str, str] | None = None,
        applied_offset: int = 0,
        damaged: tuple[int, ...] = (),
        rewritten: frozenset[str] = frozenset(),
        store: StateStore | None = None,
    ) -> None:
        # without a store: the state; with one: what changed since its last commit
        self.state: dict[str, str | None] = dict(state or {})
        self.applied_offset = applied_offset  # the next offset to apply
        self.damaged: list[int] = list(damaged)  # offsets that could not be applied
        self.rewritten: set[str] = set(rewritten)  # keys set or deleted since damaged[-1]
        self.store = store
        mark = store.mark if store is not None else Mark(applied_offset)
        self.last_crc = mark.crc  # of the payload at applied_offset - 1, as apply_run saw it
        self._committed_damaged = len(self.damaged)  # damaged[:this] are in the store
        self._rewritten_reset = False  # a damaged entry since the last commit

    def apply(self, payload: str) -> None:
        key = None
        if payload.startswith("set "):
            key, sep, value = payload[4:].partition("=")
            if sep and key and " " not in key:
                self.state[key] = value
            else:
                key = None
        elif payload.startswith("del "):
            key = payload[4:]
            if key and " " not in key and "=" not in key:
                self._delete(key)
            else:
                key = None
        if key is not None and self.damaged:
            self.rewritten.add(key)
        self.applied_offset += 1

    def apply_run(self, payloads: Sequence[bytes | None]) -> None:
        """apply, for a run of consecutive entries' raw payloads (None: an entry
        that cannot be read, as apply_damaged), as apply would with each decoded
        as UTF-8 (invalid bytes replaced). The rules are applied to the bytes
        ("set ", "=", " " are ASCII, so they mean the same there) and the run's
        changes are gathered by key first, so a key set many times in a run is
        decoded once, and a value only if the run leaves it set. A key that is
        not ASCII is applied as it comes (invalid bytes could make two such
        keys one key; none decodes to an ASCII key)."""
        changes: dict[bytes, bytes | None] = {}  # key -> value, None: deleted
        done = 0  # payloads of the run applied or gathered
        deleted = False  # a None among changes' values
        for payload in payloads:
            key = value = None
            if payload is None:
                self._merge(changes, done, deleted)
                changes, done, deleted = {}, 0, False
                self.apply_damaged()
                continue
            done += 1
            head = payload[:4]
            if head == b"set ":
                key, sep, value = payload[4:].partition(b"=")
                if not sep or not key or SPACE in key:
                    continue
            elif head == b"del ":
                key = payload[4:]
                if not key or SPACE in key or EQUALS in key:
                    continue
                deleted = True
            else:
                continue
            if not key.isascii():  # as it comes: its decoded form is never an ASCII key's
                done -= 1
                self.apply(payload.decode("utf-8", "replace"))
                continue
            changes[key] = value
        self._merge(changes, done, deleted)
        if payloads:  # the store's Mark names the newest entry by its payload's CRC
            last = payloads[-1]
            self.last_crc = None if last is None else zlib.crc32(last)

    def _delete(self, key: str) -> None:
        if self.store is None:
            self.state.pop(key, None)
        else:
            self.state[key] = None  # over the store: a tombstone until the next commit

    def _merge(self, changes: dict[bytes, bytes | None], entries: int, deleted: bool) -> None:
        """Fold apply_run's gathered changes of `entries` entries into the state."""
        state = self.state
        if deleted:
            for raw, value in changes.items():
                key = raw.decode()  # apply_run gathers only ASCII keys
                if value is None:
                    self._delete(key)
                else:
                    state[key] = value.decode("utf-8", "replace")
        else:  # only sets (the common run): the loops run in C
            values = map(_decode, cast("dict[bytes, bytes]", changes).values())
            state.update(zip(map(bytes.decode, changes), values, strict=True))
        if self.damaged:
            self.rewritten.update(map(bytes.decode, changes))
        self.applied_offset += entries

    def apply_damaged(self) -> None:
        """The entry at applied_offset cannot be read: every key is uncertain now."""
        self.damaged.append(self.applied_offset)
        self.rewritten.clear()
        self._rewritten_reset = True
        self.applied_offset += 1

    def whole_state(self) -> dict[str, str]:
        """The state as one dict: only a state machine without a store holds it."""
        assert self.store is None, "the state is in the store: read it with get"
        return cast("dict[str, str]", self.state)

    def get(self, key: str) -> str | None:
        """`key`'s value, None if it is not set."""
        if self.store is None or key in self.state:
            return self.state.get(key)
        return self.store.get(key)

    def changes(self, epoch: int | None = None) -> Changes:
        """The changes since the store's last commit, with the Mark they reach
        (`epoch`: that of the entry at applied_offset - 1, a replica's), for
        its next commit; `committed` once it succeeded."""
        return Changes(
            self.state,
            self.rewritten,
            self._rewritten_reset,
            self.damaged[self._committed_damaged :],
            Mark(self.applied_offset, self.last_crc if self.applied_offset else None, epoch),
        )

    def committed(self) -> None:
        """The store holds `changes()`: the overlay starts empty again."""
        self.state, self.rewritten, self._rewritten_reset = {}, set(), False
        self._committed_damaged = len(self.damaged)

    def uncertain(self, key: str) -> list[int]:
        """The damaged offsets `key`'s value may depend on (empty: it is certain).

        A key set or deleted since the last damaged entry is certain; any
        other may have been changed by a damaged one (which, is not known)."""
        if not self.damaged or key in self.rewritten:
            return []
        store = self.store
        if store is not None and not self._rewritten_reset and store.is_rewritten(key):
            return []
        return self.damaged


def replay(entries: list[tuple[str, bool]]) -> tuple[int, int, dict[str, str]]:
    """Replay (payload, checksum_valid) pairs in order, stopping at the first
    invalid one (a torn write: it and all after it are skipped).

    Returns (entries_replayed, entries_skipped, state).
    """
    sm = StateMachine()
    for i, (payload, valid) in enumerate(entries):
        if not valid:
            return i, len(entries) - i, sm.whole_state()
        sm.apply(payload)
    return len(entries), 0, sm.whole_state()
