"""Differential sessions with faults between their steps (session.Damage,
Crash, KillRole): rot, torn and zeroed tails, a branch's own files removed or
garbled, snapshots damaged, walctl repair, kill -9 of the tree or of one
process at a barrier. Both nodes get the same fault at the same entry, so
their answers after it must be the same (scripts/differential.py damage)."""

from __future__ import annotations

from walctl.differential.cases import SessionBuilder
from walctl.differential.session import Crash, Damage, KillRole, Session

KEYS = 20
SMALL = ("--max-segment-bytes=4096",)


class FaultBuilder(SessionBuilder):
    def sets(self, count: int, first: int = 0, size: int = 0, keys: int = KEYS) -> None:
        """`count` appends `set k<i mod keys>=<i>` (padded to `size`) in one write."""
        pad = "v" * size
        self.step(*(self.append(f"set k{i % keys}={pad}{i}") for i in range(first, first + count)))

    def gets(self) -> None:
        """kv_get of every key (and one never set), then wal_info, in one write."""
        lines = [self.body(f'"type": "kv_get", "key": "k{k}"') for k in range(KEYS)]
        lines.append(self.body('"type": "kv_get", "key": "never"'))
        lines.append(self.body('"type": "wal_info"'))
        self.step(*lines)

    def reads(self, *offsets: int) -> None:
        self.step(*(self.body(f'"type": "wal_read", "offset": {o}') for o in offsets))

    def damage(self, action: str) -> None:
        self.steps.append(Damage(action))
        self.init()

    def crash(self) -> None:
        self.steps.append(Crash())
        self.init()

    def kill(self, role: str) -> None:
        self.steps.append(KillRole(role))

    def restart_init(self) -> None:
        self.restart()
        self.init()

    def gets_with_init(self) -> None:
        """A restart whose init and kv_gets come in one write: read-your-writes
        before the compactor could have recovered."""
        self.restart()
        lines = [
            self.line(
                b'{"src": "c0", "dest": "n1", "body": {"type": "init", '
                b'"msg_id": MID, "node_id": "n1", "node_ids": ["n1"]}}'
            )
        ]
        lines += [self.body(f'"type": "kv_get", "key": "k{k}"') for k in range(KEYS)]
        self.step(*lines)


def _rot(
    name: str, flags: tuple[str, ...], offset: int, how: str = "flip_entry", crash: bool = True
) -> Session:
    """Entry `offset` rotted; the entries after it set k0..k4 only, so the other
    keys are uncertain (error 22) until set again. `crash`: the node is killed
    before the damage, so no snapshot at the stop covers it and it is replayed."""
    b = FaultBuilder(name, flags)
    b.init()
    b.sets(offset + 1)
    b.sets(299 - offset, offset + 1, keys=5)
    b.damage(f"{'crash+' if crash else ''}{how}:{offset}")
    b.gets()
    b.reads(offset - 1, offset, offset + 1)
    b.sets(10, 300)  # sets k0..k9 again: certain once more
    b.gets()
    b.restart_init()
    b.gets()
    b.step(b.body('"type": "wal_snapshot"'))
    b.restart_init()
    b.gets()
    return b.build()


def _tail(name: str, flags: tuple[str, ...], action: str) -> Session:
    b = FaultBuilder(name, flags)
    b.init()
    b.sets(200)
    b.damage(action)
    b.gets()
    b.sets(100, 200)
    b.damage(action)
    b.gets()
    b.sets(5, 300)
    b.damage(f"crash+{action}")
    b.gets()
    b.sets(5, 1000)
    b.gets()
    b.crash()
    b.gets()
    return b.build()


def _extra(name: str, flags: tuple[str, ...], how: str, snapshot: bool) -> Session:
    """A branch's own files (a state store, a prepared segment) removed, cut,
    garbled or zeroed after a graceful stop and after a kill -9."""
    b = FaultBuilder(name, flags)
    b.init()
    b.sets(500)
    if snapshot:
        b.step(b.body('"type": "wal_snapshot"'))
        b.step(b.body('"type": "wal_compact", "snapshot_at_offset": 300'))
    b.sets(100, 500)
    b.damage(f"extra:{how}")
    b.gets()
    b.sets(100, 600)
    b.crash()
    b.steps.append(Damage(f"extra:{how}"))
    b.gets_with_init()
    b.gets()
    b.sets(10, 700)
    b.gets()
    return b.build()


def _kills(name: str, flags: tuple[str, ...]) -> Session:
    b = FaultBuilder(name, flags)
    b.init()
    for round_ in range(3):
        b.sets(400, 400 * round_)
        b.kill("compactor")
        b.gets()
        b.sets(50, 400 * round_ + 5000)
        b.kill("writer")
        b.gets()
        if round_ == 1:
            b.step(b.body('"type": "wal_snapshot"'))
            b.kill("compactor")
            b.gets()
    b.crash()
    b.gets()
    b.gets_with_init()
    return b.build()


def _snapshots(name: str, flags: tuple[str, ...]) -> Session:
    b = FaultBuilder(name, flags)
    b.init()
    b.sets(300)
    b.step(b.body('"type": "wal_snapshot"'))
    b.sets(300, 300)
    b.step(b.body('"type": "wal_snapshot"'))
    b.step(b.body('"type": "wal_compact", "snapshot_at_offset": 300'))
    b.sets(50, 600)
    b.damage("snapshots:garble")  # the newest fails: fall back to the one at 300
    b.gets()
    b.sets(20, 700)
    b.damage("snapshots:delete")  # the log starts at 300: no snapshot covers it
    b.gets()
    return b.build()


def _repair(name: str, flags: tuple[str, ...], offset: int) -> Session:
    """A damaged length field: the writer stops naming it; walctl repair marks it."""
    b = FaultBuilder(name, flags)
    b.init()
    b.sets(300)
    b.damage(f"crash+flip_length:{offset}")
    b.gets()
    b.steps.append(Damage("repair"))
    b.init()
    b.gets()
    b.reads(offset - 1, offset, offset + 1)
    b.sets(10, 300)
    b.gets()
    return b.build()


def _big(name: str) -> Session:
    """Records of 300 KB to 1 MiB: runs crossing the tail's 1 MiB chunks."""
    b = FaultBuilder(name, ("--max-segment-bytes=8388608",))
    b.init()
    for i in range(14):
        b.step(b.append(f"set k{i % KEYS}={'b' * (300_000 + 70_000 * i)}{i}"))
        b.sets(3, 100 + 3 * i)
    b.gets()
    b.damage("flip_entry:20")
    b.gets()
    b.restart_init()
    b.gets()
    b.damage("cut_tail:100")
    b.gets()
    return b.build()


def all_damage_cases() -> dict[str, Session]:
    cases = [
        _rot("rot_newest", (), 150),
        _rot("rot_newest_stopped", (), 150, crash=False),
        _rot("rot_sealed", SMALL, 20),
        _rot("rot_newest_small", SMALL, 295),
        _rot("length_sealed", SMALL, 20, "flip_length"),
        _rot("length_newest", (), 200, "flip_length"),
        _tail("torn_tail", (), "cut_tail:5"),
        _tail("torn_tail_two_records", (), "cut_tail:40"),
        _tail("zero_tail", (), "zero_tail:7"),
        _tail("torn_tail_small", SMALL, "cut_tail:3"),
        _extra("extra_delete", (), "delete", False),
        _extra("extra_truncate", (), "truncate", False),
        _extra("extra_garble", (), "garble", True),
        _extra("extra_zero", (), "zero", True),
        _extra("extra_delete_small", SMALL, "delete", True),
        _extra("extra_garble_small", SMALL, "garble", False),
        _extra("extra_truncate_small", SMALL, "truncate", True),
        _kills("kills", ()),
        _kills("kills_small", SMALL),
        _snapshots("snapshots", ()),
        _repair("repair_newest", (), 150),
        _repair("repair_sealed", SMALL, 30),
        _big("big_records"),
    ]
    return {c.name: c for c in cases}
