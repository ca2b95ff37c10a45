"""A session: the exact bytes a client writes to a walnode's stdin, how they
are cut into writes, and where the client waits (a barrier) or restarts the
node on the same data directory."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    """Bytes written in `writes` (one write(2) call each, `pause` seconds
    apart), then a barrier: the runner waits until every reply the step asks
    for is out (runner.py)."""

    writes: tuple[bytes, ...]
    pause: float = 0.0


@dataclass(frozen=True)
class Restart:
    """Close stdin, wait for the node to exit, start it again on the same
    data directory (its reply counter starts at 0 again)."""


@dataclass(frozen=True)
class Damage:
    """Stop the node (as Restart), change its data directory (damage.py's
    `action`), start it again."""

    action: str


@dataclass(frozen=True)
class Crash:
    """kill -9 the node's process group (after the last barrier: nothing in
    flight), then start it again on the same data directory."""


@dataclass(frozen=True)
class KillRole:
    """kill -9 one process of the tree (`writer`, `compactor`, `front`) after the
    last barrier, then wait until `status` shows every process ready again."""

    role: str


Change = Restart | Damage | Crash | KillRole


@dataclass(frozen=True)
class Session:
    name: str
    flags: tuple[str, ...] = ()
    steps: tuple[Step | Change, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        """The session as JSON (writes in base64): a reproducer on disk."""
        steps: list[dict] = []
        for step in self.steps:
            if isinstance(step, Restart):
                steps.append({"restart": True})
            elif isinstance(step, Damage):
                steps.append({"damage": step.action})
            elif isinstance(step, Crash):
                steps.append({"crash": True})
            elif isinstance(step, KillRole):
                steps.append({"kill": step.role})
            else:
                writes = [base64.b64encode(w).decode() for w in step.writes]
                steps.append({"writes": writes, "pause": step.pause})
        return {"name": self.name, "flags": list(self.flags), "steps": steps}

    @classmethod
    def from_json(cls, data: dict) -> Session:
        steps: list[Step | Change] = []
        for step in data["steps"]:
            if step.get("restart"):
                steps.append(Restart())
            elif "damage" in step:
                steps.append(Damage(step["damage"]))
            elif step.get("crash"):
                steps.append(Crash())
            elif "kill" in step:
                steps.append(KillRole(step["kill"]))
            else:
                writes = tuple(base64.b64decode(w) for w in step["writes"])
                steps.append(Step(writes, step["pause"]))
        return cls(data["name"], tuple(data["flags"]), tuple(steps))

    def digest(self) -> str:
        """sha256 of the session: a stored corpus entry is for exactly this session."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def request_bytes(self) -> int:
        return sum(sum(map(len, s.writes)) for s in self.steps if isinstance(s, Step))
