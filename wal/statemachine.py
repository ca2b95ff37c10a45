"""The state machine every walnode replica folds its log into.

set KEY=VALUE   KEY has no spaces and no '='; VALUE is the rest (may be empty)
del KEY         removes KEY
anything else   stays in the log and leaves the state as it is
"""

from __future__ import annotations


class StateMachine:
    def __init__(self, state: dict[str, str] | None = None, applied_offset: int = 0) -> None:
        self.state: dict[str, str] = dict(state or {})
        self.applied_offset = applied_offset  # the next offset to apply

    def apply(self, payload: str) -> None:
        if payload.startswith("set "):
            key, sep, value = payload[4:].partition("=")
            if sep and key and " " not in key:
                self.state[key] = value
        elif payload.startswith("del "):
            key = payload[4:]
            if key and " " not in key and "=" not in key:
                self.state.pop(key, None)
        self.applied_offset += 1


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
