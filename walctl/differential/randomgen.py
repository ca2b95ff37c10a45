"""Random differential sessions for long runs (scripts/differential.py random):
runs of up to thousands of lines in one write, mixed from plain appends and
every adversarial shape, cut into writes at random bytes with random pauses,
with restarts, snapshots, compactions and segment rolls among them. A seed
gives one session, so a difference found is replayed by its seed."""

from __future__ import annotations

import json
import random

from walctl.differential import lines as L
from walctl.differential.cases import SessionBuilder
from walctl.differential.session import Session

FLAG_SETS: list[tuple[str, ...]] = [
    (),
    ("--max-segment-bytes=4096",),
    ("--max-segment-bytes=1024", "--max-payload-bytes=300", "--max-line-bytes=4096"),
    ("--max-payload-bytes=64", "--max-line-bytes=4096"),
]
ADVERSARIAL = [*L.NOT_REQUESTS, *L.FRONT_ANSWERED, *L.ODD_BUT_VALID]
ALONE = [*ADVERSARIAL, *L.LOCKSTEP_ONLY, *L.init_lines(), *L.before_init()]


def random_text(rng: random.Random) -> str:
    """A payload: state-machine commands mostly, else any Unicode text."""
    kind = rng.random()
    if kind < 0.4:
        return f"set k{rng.randrange(20)}={'v' * rng.randrange(30)}{rng.randrange(1000)}"
    if kind < 0.5:
        return f"del k{rng.randrange(20)}"
    size = rng.choice([0, 1, 2, 10, 63, 64, 65, 100, 299, 300, 301, 1000])
    alphabet = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF)]
    alphabet.append((0x10000, 0x10FFFF))
    out = []
    for _ in range(size):
        low, high = rng.choice(alphabet)
        out.append(chr(rng.randint(low, high)))
    return "".join(out)


def random_append(b: SessionBuilder, rng: random.Random, srcs: list[str]) -> bytes:
    body: dict = {"type": "wal_append", "msg_id": b.next_id, "payload": random_text(rng)}
    b.next_id += 1
    if rng.random() < 0.02:
        del body["msg_id"]
    src = rng.choice(srcs)
    layout = rng.random()
    if layout < 0.5:
        return L.envelope(body, src=src)
    if layout < 0.8:
        return L.compact(body, src=src)
    if layout < 0.9:  # raw UTF-8 rather than \u escapes
        text = json.dumps({"src": src, "dest": "n1", "body": body}, ensure_ascii=False)
        return text.encode("utf-8") + b"\n"
    return L.envelope(body, src=src)[:-1] + b"\r\n"


def cut(data: bytes, rng: random.Random) -> tuple[bytes, ...]:
    """`data` in 1 to 6 writes, cut at random bytes (inside lines and characters)."""
    if len(data) < 2 or rng.random() < 0.4:
        return (data,)
    points = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 5))))
    return tuple(data[a:z] for a, z in zip([0, *points], [*points, len(data)], strict=True))


def bulk_step(b: SessionBuilder, rng: random.Random, srcs: list[str]) -> None:
    lines = [b.line(rng.choice(L.KV_GETS)) for _ in range(rng.randrange(3))]
    for _ in range(rng.choice([1, 2, 10, 100, 500, 1000, 3000])):
        roll = rng.random()
        if roll < 0.75:
            lines.append(random_append(b, rng, srcs))
        elif roll < 0.97:
            lines.append(b.line(rng.choice(ADVERSARIAL)))
        elif roll < 0.99:
            lines.append(b.body(f'"type": "wal_read", "offset": {rng.randrange(3000)}'))
        else:
            lines.append(b.body(f'"type": "wal_scan", "from_offset": {rng.randrange(3000)}'))
    data = b"".join(lines)
    b.writes(*cut(data, rng), pause=rng.choice([0.0, 0.0, 0.01, 0.05]))


def random_session(seed: int) -> Session:
    rng = random.Random(seed)
    b = SessionBuilder(f"random-{seed}", rng.choice(FLAG_SETS))
    srcs = ["c1", "c2", "client-\u00e9"]
    if rng.random() < 0.2:
        srcs += [f"c{i}" for i in range(12_000)]  # past the front's 10,000 cached ids
    for _ in range(rng.randrange(3)):
        b.step(*(b.line(t) for t in rng.sample(L.before_init(), 4)))
    b.init()
    for _ in range(rng.randint(10, 40)):
        roll = rng.random()
        if roll < 0.5:
            bulk_step(b, rng, srcs)
        elif roll < 0.85:
            b.step(b.line(rng.choice(ALONE)))
        elif roll < 0.9:
            b.step(b.body('"type": "wal_snapshot"'))
            b.step(b.body(f'"type": "wal_compact", "snapshot_at_offset": {rng.randrange(2000)}'))
        elif roll < 0.93:
            size = rng.choice([1024, 4096, 100_000])  # not 64: 3000 rolls pass 10 s
            b.step(b.body(f'"type": "wal_segment_config", "max_segment_bytes": {size}'))
        elif roll < 0.96:
            b.restart()
            if rng.random() < 0.8:
                b.init()
        else:
            b.step(b.body('"type": "wal_scan", "from_offset": 0, "max_entries": 10000'))
            b.step(b.body('"type": "wal_segment_info"'), b.body('"type": "wal_info"'))
    return b.build()
