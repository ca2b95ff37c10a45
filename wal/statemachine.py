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
