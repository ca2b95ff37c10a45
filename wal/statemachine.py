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

from collections.abc import Sequence
from typing import cast

# apply_run looks for these bytes as ints: `b" " in key` first tries b" " as an
# int, and formats and clears a TypeError for every entry (~120 ns)
SPACE, EQUALS = ord(" "), ord("=")


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class StateMachine:
    def __init__(
        self,
        state: dict[str, str] | None = None,
        applied_offset: int = 0,
        damaged: tuple[int, ...] = (),
        rewritten: frozenset[str] = frozenset(),
    ) -> None:
        self.state: dict[str, str] = dict(state or {})
        self.applied_offset = applied_offset  # the next offset to apply
        self.damaged: list[int] = list(damaged)  # offsets that could not be applied
        self.rewritten: set[str] = set(rewritten)  # keys set or deleted since damaged[-1]

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
                self.state.pop(key, None)
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

    def _merge(self, changes: dict[bytes, bytes | None], entries: int, deleted: bool) -> None:
        """Fold apply_run's gathered changes of `entries` entries into the state."""
        state = self.state
        if deleted:
            for raw, value in changes.items():
                key = raw.decode()  # apply_run gathers only ASCII keys
                if value is None:
                    state.pop(key, None)
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
        self.applied_offset += 1

    def uncertain(self, key: str) -> list[int]:
        """The damaged offsets `key`'s value may depend on (empty: it is certain).

        A key set or deleted since the last damaged entry is certain; any
        other may have been changed by a damaged one (which, is not known)."""
        if not self.damaged or key in self.rewritten:
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
            return i, len(entries) - i, sm.state
        sm.apply(payload)
    return len(entries), 0, sm.state
