"""walctl crashtest: kill walnode's processes under load, then check the log.

A live walnode, started here exactly as a user starts it (`python node.py`
with pipes), takes wal_append requests with N always in flight while a
consumer tails the log with wal_scan and a killer sends SIGKILL to one of
its processes (writer, compactor or front) at random times. Afterwards the
node is asked what it holds, and the verdict says what was acknowledged,
lost (must be 0), duplicated (must be 0) and recovered, and how long each
kill kept the service down. docs/CRASHTEST.md explains the method.
"""

from __future__ import annotations

import argparse
import array
import collections
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from actors import procfs
from actors.codes import Code
from walctl.reportfile import tidy, write_json
from walnode import Client, WalnodeError, node_command

ROLES = ("writer", "compactor", "front")
RANDOM_WEIGHTS = {"writer": 70, "compactor": 15, "front": 15}
CONTROL_IDS = 10**12  # an append's msg_id is its request index; other requests' start here
FENCE = "crashtest fence"
# An append still unanswered this long after a kill is written off: its slot
# in the window goes to a new append. walnode answers every request, also
# across a front crash; this keeps a reply that never comes from stalling
# the load (and the end of the campaign) for good.
WRITE_OFF_S = 1.0
VIOLATIONS = ("lost", "duplicated", "phantoms", "misordered", "state_mismatches")

# what became of an append (Ledger.outcome)
PENDING, ACKED, CRASHED, TIMED_OUT, UNAVAILABLE, REJECTED = range(6)
OUTCOME_OF_ERROR = {
    Code.CRASH: CRASHED,
    Code.TIMEOUT: TIMED_OUT,
    Code.TEMPORARILY_UNAVAILABLE: UNAVAILABLE,
}  # other codes: REJECTED
INDEFINITE = (PENDING, CRASHED, TIMED_OUT)  # may or may not be in the log

# what was read at an offset (History.at), when it is not one of our requests
UNSEEN, NOT_OURS, FENCE_ENTRY, EPOCH_ENTRY = -1, -2, -3, -4  # EPOCH: a leader's first record
PAYLOAD_RE = re.compile(r"set k(\d+)=(\d+)")


class CampaignAborted(Exception):
    """The campaign cannot go on: the node died or stopped serving."""


# -- what each append was told ----------------------------------------------


class Ledger:
    """Append i has msg_id i and payload `set k<i % keys>=<i>`; it is sent once."""

    def __init__(self, keys: int) -> None:
        self.keys = keys
        self.sent_at = array.array("d")
        self.replied_at = array.array("d")
        self.offset = array.array("q")
        self.outcome = array.array("b")
        self.written_off: set[int] = set()  # no reply long after a kill: slot given back
        self.double_replies: list[int] = []
        self.acked = 0

    def __len__(self) -> int:
        return len(self.outcome)

    def payload(self, i: int) -> str:
        return f"set k{i % self.keys}={i}"

    def add(self) -> int:
        self.sent_at.append(0.0)
        self.replied_at.append(0.0)
        self.offset.append(-1)
        self.outcome.append(PENDING)
        return len(self.outcome) - 1

    def record(self, i: int, body: dict, t: float) -> bool:
        """Store a reply; True if it acknowledged the append."""
        if self.outcome[i] != PENDING:
            self.double_replies.append(i)
            return False
        self.replied_at[i] = t
        if body.get("type") == "wal_append_ok":
            self.offset[i] = body["offset"]
            self.outcome[i] = ACKED
            self.acked += 1
            return True
        self.outcome[i] = OUTCOME_OF_ERROR.get(body.get("code"), REJECTED)
        return False


# -- the node and its pipes -------------------------------------------------


class Waiter:
    """A control request's reply: `body` stays None if none came in time
    (or a killed front took it); `at` is when it was read; `settled` once
    `done` has run."""

    def __init__(self) -> None:
        self.body: dict | None = None
        self.at = 0.0
        self.settled = threading.Event()

    def done(self, future: Future) -> None:  # runs in the reader, as the reply is read
        self.at = time.monotonic()
        if future.exception() is None:
            self.body = future.result()
        self.settled.set()


class Node:
    """One walnode (the walnode.Client) under load: appends go out as raw
    lines whose msg_id is their ledger index, and their replies come back
    through `on_append_reply`; control requests are the client's own."""

    def __init__(
        self,
        argv: list[str],
        on_append_reply: Callable[[int, dict, float, bool], None],
        log_path: str | None = None,
    ) -> None:
        self.epoch = time.monotonic()  # log lines are stamped with seconds since this
        self.log_file = open(log_path, "w") if log_path else None
        self.log_lock = threading.Lock()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=200)
        self.alerts: list[str] = []  # CRITICAL lines, tracebacks, garbage on stdout
        self.on_append_reply = on_append_reply
        self.lock = threading.Lock()  # inflight
        self.inflight: set[int] = set()  # append msg_ids sent, not answered
        self.client = Client.spawn(
            command=argv,
            init=False,
            first_msg_id=CONTROL_IDS,
            on_unmatched=self._on_append_reply,
            on_stderr=self._on_stderr,
        )
        self.proc = self.client.proc

    @property
    def alive(self) -> bool:
        return self.client.alive

    def send(self, items: list[tuple[int, str]], stamp: Callable[[float], None] | None = None):
        """Write (msg_id, body as JSON) lines at once; `stamp(t)` runs right before."""
        data = "".join(f'{{"src": "c1", "dest": "n1", "body": {body}}}\n' for _, body in items)
        if stamp is not None:
            stamp(time.monotonic())
        with self.lock:
            self.inflight.update(msg_id for msg_id, _ in items)
        self.client.send_lines(data.encode())

    def call_many(self, bodies: Sequence[dict], timeout: float) -> list[Waiter]:
        """Send requests together and wait up to `timeout` for their replies."""
        futures = self.client.requests_async(bodies, timeout)
        waiters = []
        for future in futures:
            waiters.append(w := Waiter())
            future.add_done_callback(w.done)
        for w in waiters:
            # Not future.exception(): a future wakes its waiters before it runs its
            # callbacks, so `body` could still be None for a reply that came. The
            # client fails every future at its deadline, so `done` always runs.
            w.settled.wait()
        return waiters

    def call(self, body: dict, timeout: float = 2.0) -> dict | None:
        return self.call_many([body], timeout)[0].body

    def unanswered_appends(self) -> list[int]:
        with self.lock:
            return list(self.inflight)

    def write_off(self, ids: list[int]) -> list[int]:
        """Stop waiting for these appends; the ones still unanswered."""
        with self.lock:  # popped here or by the reply, never both: one slot freed
            gone = [i for i in ids if i in self.inflight]
            self.inflight.difference_update(gone)
            return gone

    def _on_append_reply(self, message: dict, raw: bytes, t: float) -> None:
        try:
            body = message["body"]
            msg_id = int(body["in_reply_to"])
        except (KeyError, TypeError, ValueError):
            self.alerts.append(f"not a reply on stdout: {raw[:200]!r}")
            return
        if msg_id >= CONTROL_IDS:
            return  # a control request's reply after its waiter gave up
        with self.lock:  # popped here or by write_off, never both
            held = msg_id in self.inflight
            self.inflight.discard(msg_id)
        self.on_append_reply(msg_id, body, t, held)

    def _on_stderr(self, line: str) -> None:
        self.note(line)
        if (" CRITICAL " in line or "Traceback" in line) and len(self.alerts) < 50:
            self.alerts.append(line)

    def note(self, line: str) -> None:
        """A line of the node log (--node-log): its stderr and our kills, timed."""
        line = f"{time.monotonic() - self.epoch:9.3f} {line}"
        with self.log_lock:
            self.stderr_tail.append(line)
            if self.log_file is not None:
                self.log_file.write(line + "\n")

    def close(self, timeout: float = 30.0) -> int | None:
        """End of input: the node answers what it read and exits; its status."""
        try:
            return self.client.close(timeout)
        except WalnodeError:
            return None
        finally:
            self.kill()

    def kill(self) -> None:
        self.client.kill()
        with self.log_lock:
            if self.log_file is not None:
                self.log_file.close()
                self.log_file = None


def child_of(pid: int, parent: int, role: str) -> bool:
    """`pid` is `parent`'s child running actors.<role>: the only kind we kill."""
    return procfs.is_child_running(pid, parent, f"actors.{role}")


# -- the load and the tail ------------------------------------------------


class Load:
    """Keeps exactly `in_flight` appends unanswered, each sent once. Probes
    (appends that time a kill's way back) come on top, outside the window."""

    def __init__(self, node: Node, ledger: Ledger, in_flight: int) -> None:
        self.node = node
        self.ledger = ledger
        self.cond = threading.Condition()
        self.free = in_flight
        self.stopping = False
        self.probes: set[int] = set()
        self.send_lock = threading.Lock()  # request order is stdin order
        self.thread = threading.Thread(target=self._run, daemon=True)

    def send(self, n: int) -> list[int]:
        """Send n new appends."""
        ledger = self.ledger

        def stamp(t: float) -> None:
            for i in ids:
                ledger.sent_at[i] = t

        with self.send_lock:
            ids = [ledger.add() for _ in range(n)]
            items = [
                (i, f'{{"type": "wal_append", "msg_id": {i}, "payload": "{ledger.payload(i)}"}}')
                for i in ids
            ]
            self.node.send(items, stamp)
        return ids

    def probe(self) -> int:
        (i,) = self.send(1)
        self.probes.add(i)
        return i

    def answered(self, i: int) -> None:
        if i not in self.probes:
            self.release()

    def release(self, n: int = 1) -> None:
        with self.cond:
            self.free += n
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(10)

    def _run(self) -> None:
        while True:
            with self.cond:
                while self.free == 0 and not self.stopping:
                    self.cond.wait()
                if self.stopping or not self.node.alive:
                    return
                n, self.free = self.free, 0
            self.send(n)


class History:
    """What the log held at each offset: read by a consumer tailing it with
    wal_scan during the campaign, and once more at the end."""

    def __init__(self, keys: int) -> None:
        self.keys = keys
        self.at = array.array("q")  # offset -> request index (or UNSEEN, ...)
        self.rewritten: list[tuple[int, int, int]] = []  # (offset, read first, read later)
        self.not_ours: list[str] = []

    def entry(self, offset: int, payload: str, epoch_start: int | None = None) -> None:
        m = PAYLOAD_RE.fullmatch(payload)
        if epoch_start is not None:  # a replicated log's epoch-start record
            i = EPOCH_ENTRY
        elif m and int(m.group(2)) % self.keys == int(m.group(1)):
            i = int(m.group(2))
        elif payload.startswith(FENCE):
            i = FENCE_ENTRY
        else:
            i = NOT_OURS
            if len(self.not_ours) < 10:
                self.not_ours.append(f"offset {offset} holds {payload[:80]!r}")
        if offset >= len(self.at):
            self.at.extend([UNSEEN] * (offset + 1 - len(self.at)))
        if self.at[offset] not in (UNSEEN, i):
            self.rewritten.append((offset, self.at[offset], i))
        self.at[offset] = i


class Tail:
    """A consumer reading each entry soon after it is written, before
    compaction removes it."""

    def __init__(self, node: Node, history: History) -> None:
        self.node = node
        self.history = history
        self.cursor = 0
        self.gaps: list[tuple[int, int]] = []  # compacted before the tail got there
        self.end_moved_back: list[tuple[int, int]] = []  # (cursor, the log's new end)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set() and self.node.alive:
            if not self.step():
                time.sleep(0.01)

    def step(self) -> bool:
        """One wal_scan from the cursor; False if nothing new came back."""
        scan = {"type": "wal_scan", "from_offset": self.cursor, "max_entries": 10_000}
        r = self.node.call(scan, timeout=0.3)  # soon again: compaction does not wait
        if r is None:
            return False  # no answer yet (a process restarts; a killed front took it)
        if r["type"] == "wal_scan_ok":
            for e in r["entries"]:
                self.history.entry(e["offset"], e["payload"], e.get("epoch_start"))
            self.cursor = r["next_offset"]
            return bool(r["entries"])
        if r.get("code") == Code.KEY_DOES_NOT_EXIST and r.get("first_offset", 0) > self.cursor:
            self.gaps.append((self.cursor, r["first_offset"]))
            self.cursor = r["first_offset"]
            return True
        if (
            r.get("code") == Code.KEY_DOES_NOT_EXIST
            and r.get("next_offset", self.cursor) < self.cursor
        ):
            self.end_moved_back.append((self.cursor, r["next_offset"]))
            self.cursor = r["next_offset"]
            return True
        return False  # 11, 13 or 0 while a process restarts: ask again

    def read(self, start: int, end: int, timeout: float = 30.0) -> None:
        """Read [start, end) now (with the tail thread stopped)."""
        self.cursor = start
        deadline = time.monotonic() + timeout
        while self.cursor < end:
            if time.monotonic() > deadline:
                raise CampaignAborted(f"could not read the log up to offset {end}")
            if not self.step():
                time.sleep(0.01)


# -- the verdict ----------------------------------------------------------


@dataclass
class Findings:
    acknowledged: int = 0
    verified_in_log: int = 0  # read at its acknowledged offset, with its payload
    unchecked: int = 0  # its offset was compacted before anyone read it
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    phantoms: list[str] = field(default_factory=list)  # in the log; never sent, or refused
    misordered: list[str] = field(default_factory=list)
    state_mismatches: list[str] = field(default_factory=list)
    keys_checked: int = 0
    recovered: int = 0  # indefinite, and in the log
    not_durable: int = 0  # indefinite, not in a log read without gaps
    unknown: int = 0  # indefinite, not found, but the log was read with gaps


def verify(
    ledger: Ledger, history: History, next_offset: int, kv: dict[int, str | None]
) -> Findings:
    """Check every append against what the node holds.

    ledger: what each append was told; history: what the log held at each
    offset; next_offset: the log's end; kv: the node's value of key k<n>
    (None: no such key) for the keys to check."""
    f = Findings()
    at = history.at
    if len(at) < next_offset:
        at.extend([UNSEEN] * (next_offset - len(at)))
    log = _read_log(ledger, history, next_offset, f)
    _check_replies(ledger, at, next_offset, log, f)
    _check_state(kv, log, f)
    return f


@dataclass
class LogWalk:
    """What one pass over the log found, for the checks after it."""

    where: dict[int, int] = field(default_factory=dict)  # request -> its offset in the log
    newest: dict[int, tuple[int, int]] = field(default_factory=dict)  # key -> (offset, request)
    last_unseen: int = -1  # the last offset nobody read (-1: the log was read without gaps)


def _read_log(ledger: Ledger, history: History, next_offset: int, f: Findings) -> LogWalk:
    """Each offset of the log: phantoms, duplicates, order; and what it held was rewritten."""
    log = LogWalk()
    at, prev = history.at, -1
    for o in range(next_offset):
        i = at[o]
        if i == UNSEEN:
            log.last_unseen = o
        if i == NOT_OURS:
            f.phantoms.append(f"offset {o} holds a payload crashtest never sent")
        if i < 0:
            continue
        if i >= len(ledger) or ledger.outcome[i] in (UNAVAILABLE, REJECTED):
            why = "never sent" if i >= len(ledger) else "refused with a definite error"
            f.phantoms.append(f"offset {o} holds request {i}, {why}")
        if i in log.where:
            f.duplicated.append(f"request {i} is in the log at offsets {log.where[i]} and {o}")
        log.where.setdefault(i, o)
        log.newest[i % ledger.keys] = (o, i)
        if i < prev:
            f.misordered.append(f"offset {o} holds request {i}, after request {prev}")
        prev = max(prev, i)
    for o, first, later in history.rewritten:
        f.lost.append(f"offset {o} held request {first}, later {later}")
    return log


def _check_replies(
    ledger: Ledger, at: list[int], next_offset: int, log: LogWalk, f: Findings
) -> None:
    """Each request by what it was told: an acknowledged one is in the log at
    its offset; an indefinite one is counted as recovered, not durable or unknown."""
    acked_at: dict[int, int] = {}  # offset -> request
    prev_o, prev_i = -1, -1
    for i in range(len(ledger)):
        outcome = ledger.outcome[i]
        if outcome == ACKED:
            f.acknowledged += 1
            o = ledger.offset[i]
            if o in acked_at:
                f.duplicated.append(f"offset {o} acknowledged to requests {acked_at[o]} and {i}")
            acked_at[o] = i
            if o <= prev_o:
                f.misordered.append(f"request {i} acknowledged at {o}, {prev_i} at {prev_o}")
            prev_o, prev_i = o, i
            _check_acked_entry(i, o, at[o] if o < next_offset else None, next_offset, f)
        elif outcome in INDEFINITE:
            if i in log.where:
                f.recovered += 1
            elif log.last_unseen >= 0:
                f.unknown += 1
            else:
                f.not_durable += 1


def _check_acked_entry(i: int, o: int, held: int | None, next_offset: int, f: Findings) -> None:
    """Request i was acknowledged at offset o, where the log holds `held`."""
    if held == i:
        f.verified_in_log += 1
    elif held is None:
        f.lost.append(f"request {i} acknowledged at {o}; the log ends at {next_offset}")
    elif held == UNSEEN:
        f.unchecked += 1
    else:
        f.lost.append(f"request {i} acknowledged at {o}; the log holds {held} there")


def _check_state(kv: dict[int, str | None], log: LogWalk, f: Findings) -> None:
    """A key's value is its newest write in the log, checked where no stretch
    that nobody read comes after that write."""
    for k, value in kv.items():
        o, i = log.newest.get(k, (-1, None))
        if log.last_unseen >= 0 and o <= log.last_unseen:
            continue
        f.keys_checked += 1
        if value != (None if i is None else str(i)):
            f.state_mismatches.append(f"key k{k} is {value!r}; its newest write is request {i}")


def judge(report: dict, max_back_to_service: float | None = None) -> list[str]:
    """Why a campaign's report fails; empty if it passes."""
    failures = []
    v = report["verdict"]
    if v is None:
        failures.append("nothing was verified")
    else:
        failures += [f"{name}: {v[name]}" for name in VIOLATIONS if v[name]]
    if report["appends"]["double_replies"]:
        failures.append(f"double replies: {report['appends']['double_replies']}")
    if report["node_exit_status"] != 0:
        failures.append(f"walnode exit status {report['node_exit_status']} at end of input")
    if report["restarts_per_role"] not in (None, report["kills_per_role"]):
        failures.append(
            f"restarts {report['restarts_per_role']} but kills {report['kills_per_role']}: "
            "a process died that was not killed"
        )
    worst = report["back_to_service"].get("all", {}).get("worst_ms", 0)
    if max_back_to_service is not None and worst > max_back_to_service * 1000:
        failures.append(f"worst back to service {worst} ms > {max_back_to_service:g} s")
    return failures


# -- the campaign ---------------------------------------------------------


def draw_roles(role: str, kills: int, rng: random.Random) -> list[str]:
    """Whom each kill hits: `role`, or for random drawn by RANDOM_WEIGHTS."""
    if role != "random":
        return [role] * kills
    return rng.choices(list(RANDOM_WEIGHTS), list(RANDOM_WEIGHTS.values()), k=kills)


@dataclass
class Kill:
    n: int
    role: str
    pid: int
    at: float  # time.monotonic() right after the SIGKILL
    back_at: float | None = None
    measured_by: str = ""
    recovery_ms: float | None = None  # the restarted process's own account (status)
    in_flight: list[int] = field(default_factory=list)  # appends unanswered at the kill,
    # and not already in flight at an earlier kill
    written_off: list[int] | None = None  # of those, still unanswered WRITE_OFF_S later

    @property
    def back_s(self) -> float | None:
        return None if self.back_at is None else self.back_at - self.at


class Campaign:
    def __init__(self, args: argparse.Namespace, data_dir: str) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.roles = draw_roles(args.role, args.kills, self.rng)
        self.node_argv = [*node_command(), "--data-dir", data_dir]
        for flag in ("snapshot_every", "keep_entries", "max_segment_bytes"):
            self.node_argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
        # The restart limit stops a node that crash-loops; these kills are
        # deliberate and faster than it allows (10 in 10 s). Ten spare
        # restarts keep it armed against a real crash loop.
        self.node_argv += ["--max-restarts", str(args.kills + 10)]
        self.ledger = Ledger(args.keys)
        self.history = History(args.keys)
        self.kills: list[Kill] = []
        self.attributed: set[int] = set()  # appends in flight at some kill
        self.watch: Kill | None = None  # a writer/front kill awaiting its first ack
        self.back = threading.Event()
        self.failures: list[str] = []
        self.started = False
        self.node = Node(self.node_argv, self.on_append_reply, args.node_log)
        self.load = Load(self.node, self.ledger, args.in_flight)
        self.tail = Tail(self.node, self.history)
        self.t0 = self.t_end = time.monotonic()

    def on_append_reply(self, i: int, body: dict, t: float, held_slot: bool) -> None:
        if self.ledger.record(i, body, t):
            w = self.watch
            if w is not None and w.back_at is None and self.ledger.sent_at[i] > w.at:
                w.back_at, w.measured_by = t, "wal_append_ok"
                self.back.set()
        if held_slot:
            self.load.answered(i)

    def start(self) -> None:
        r = self.node.call({"type": "init", "node_id": "n1", "node_ids": ["n1"]}, timeout=30)
        if r is None or r["type"] != "init_ok":
            raise CampaignAborted(f"walnode did not answer init: {r}")
        self.t0 = self.node.epoch = time.monotonic()
        self.started = True
        self.load.thread.start()
        self.tail.thread.start()

    def check_alive(self) -> None:
        if not self.node.alive:
            raise CampaignAborted(f"walnode exited (status {self.node.proc.poll()})")

    def status(self) -> dict[str, dict]:
        """Each role's status entry, once every process is ready."""
        deadline = time.monotonic() + self.args.recovery_limit
        while time.monotonic() < deadline:
            self.check_alive()
            r = self.node.call({"type": "status"}, timeout=1.0)
            if r is not None and r["type"] == "status_ok":
                procs = {p["role"]: p for p in r["processes"]}
                if all(procs[role]["state"] == "ready" for role in ROLES):
                    if self.kills and self.kills[-1].recovery_ms is None:
                        rec = r.get("recoveries", {}).get(self.kills[-1].role)
                        self.kills[-1].recovery_ms = rec.get("duration_ms") if rec else None
                    return procs
            time.sleep(0.01)
        raise CampaignAborted(f"not every process was ready {self.args.recovery_limit:g} s on")

    def run_kills(self, progress) -> None:
        """Each kill comes a random gap after the previous one, and never
        before the service is back and every process is ready."""
        t_prev = time.monotonic()
        for n, role in enumerate(self.roles, 1):
            due = t_prev + self.rng.uniform(0.5, 1.5) * self.args.interval
            while time.monotonic() < due:
                self.check_alive()
                self.write_off_stuck()
                time.sleep(min(0.01, max(0.0, due - time.monotonic())))
            pid = self.status()[role]["pid"]
            if not child_of(pid, self.node.proc.pid, role):
                raise CampaignAborted(f"pid {pid} is not this node's {role}; not killing it")
            time.sleep(self.rng.uniform(0, 0.01))  # not in step with the status reply
            kill = self.kill(n, role, pid)
            self.wait_back(kill)
            t_prev = kill.at
            progress.update(1)
            rate = self.ledger.acked / (time.monotonic() - self.t0)
            progress.set_postfix_str(
                f"acked {self.ledger.acked} ({rate:.0f}/s), back in {kill.back_s * 1000:.0f} ms"
            )

    def kill(self, n: int, role: str, pid: int) -> Kill:
        # The load goes on meanwhile (holding it back would time kills just after
        # a write): an append stamped after `at` was written after the kill.
        os.kill(pid, signal.SIGKILL)
        return self.record_kill(n, role, pid, f"SIGKILL to the {role}, pid {pid}")

    def record_kill(self, n: int, role: str, pid: int, what: str) -> Kill:
        """Note a fault that just hit (`what` it was) and the appends in flight then."""
        kill = Kill(n, role, pid, time.monotonic())
        if role != "compactor":
            self.back.clear()
            self.watch = kill
        sent_at = self.ledger.sent_at
        unanswered = set(self.node.unanswered_appends()) - self.attributed
        kill.in_flight = sorted(i for i in unanswered if sent_at[i] <= kill.at)
        self.attributed.update(kill.in_flight)
        self.kills.append(kill)
        self.node.note(f"crashtest: kill {n}: {what}")
        return kill

    def write_off_stuck(self) -> None:
        """Give up on appends still unanswered WRITE_OFF_S after a kill."""
        for k in self.kills:
            if k.written_off is None and time.monotonic() >= k.at + WRITE_OFF_S:
                k.written_off = self.node.write_off(k.in_flight)
                self.ledger.written_off.update(k.written_off)
                self.load.release(len(k.written_off))

    def wait_back(self, kill: Kill) -> None:
        """Until the service is back: an append sent after the kill is
        acknowledged (writer, front), or a kv_get is answered (compactor).
        Probes make sure such requests are sent even while every append of
        the window waits for a reply that a killed process took with it."""
        deadline = kill.at + self.args.recovery_limit
        probe, probe_at = None, 0.0
        while kill.back_at is None and time.monotonic() < deadline:
            self.check_alive()
            self.write_off_stuck()
            if kill.role != "compactor":
                now = time.monotonic()
                if probe is None or self.ledger.outcome[probe] != PENDING or now > probe_at + 1:
                    probe, probe_at = self.load.probe(), now
                self.back.wait(0.01)
                continue
            w = self.node.call_many([{"type": "kv_get", "key": "k0"}], timeout=1.0)[0]
            if w.body is not None and (
                w.body["type"] == "kv_get_ok" or w.body.get("code") == Code.KEY_DOES_NOT_EXIST
            ):
                kill.back_at, kill.measured_by = w.at, "kv_get answered"
            else:
                time.sleep(0.002)
        self.watch = None
        if kill.back_at is None:
            raise CampaignAborted(
                f"kill {kill.n} ({kill.role}, pid {kill.pid}): no service "
                f"{self.args.recovery_limit:g} s later"
            )
        self.node.note(f"crashtest: kill {kill.n}: back after {kill.back_s:.3f} s")

    def finish(self) -> dict:
        """Stop the load, collect the replies, read the log and the state back."""
        self.load.stop()
        self.t_end = time.monotonic()
        deadline = time.monotonic() + self.args.drain_timeout
        while time.monotonic() < deadline and self.node.alive:
            self.write_off_stuck()
            with self.node.lock:
                if not any(i < CONTROL_IDS for i in self.node.inflight):
                    break
            time.sleep(0.01)
        self.tail.stopping.set()
        self.tail.thread.join(10)
        self.check_alive()
        # A last append moves the front's read-your-writes mark past every
        # entry, so kv_get reflects the whole log.
        for attempt in range(10):
            r = self.node.call({"type": "wal_append", "payload": f"{FENCE} {attempt}"}, 10)
            if r is not None and r["type"] == "wal_append_ok":
                break
            time.sleep(0.2)
        else:
            raise CampaignAborted(f"the closing append was not acknowledged: {r}")
        info = self.node.call({"type": "wal_info"}, timeout=10)
        if info is None or info["type"] != "wal_info_ok":
            raise CampaignAborted(f"wal_info failed: {info}")
        first, end = info["first_offset"], info["next_offset"]
        self.tail.read(self.tail.cursor, end)  # the tail catches up
        self.tail.read(first, end)  # and everything retained is read once more
        return {
            "first_offset": first,
            "next_offset": end,
            "kv": self.read_state(),
            "processes": self.status(),
        }

    def read_state(self) -> dict[int, str | None]:
        keys = range(min(self.ledger.keys, len(self.ledger)))
        kv: dict[int, str | None] = {}
        for lo in range(0, len(keys), 256):
            batch = keys[lo : lo + 256]
            bodies = [{"type": "kv_get", "key": f"k{k}"} for k in batch]
            for k, w in zip(batch, self.node.call_many(bodies, timeout=30), strict=True):
                if w.body is None or w.body["type"] != "kv_get_ok" and w.body.get("code") != 20:
                    raise CampaignAborted(f"kv_get k{k} failed: {w.body}")
                kv[k] = w.body.get("value")
        return kv


# -- the report -----------------------------------------------------------


def summarize_back(kills: list[Kill], roles: Sequence[str] = ROLES) -> dict:
    """p50, p99 (nearest rank) and worst back-to-service time, per role and over all."""
    out = {}
    for role in (*roles, "all"):
        times = sorted(k.back_s for k in kills if k.back_s is not None and role in (k.role, "all"))
        if times:
            p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
            out[role] = {
                "kills": len(times),
                "p50_ms": round(statistics.median(times) * 1000, 1),
                "p99_ms": round(p99 * 1000, 1),
                "worst_ms": round(times[-1] * 1000, 1),
            }
    return out


def in_flight_outcomes(ledger: Ledger, ids: list[int]) -> dict[str, int]:
    """What became of the appends in flight at a kill."""
    names = {ACKED: "acked", CRASHED: "error_13", TIMED_OUT: "error_0", UNAVAILABLE: "error_11"}
    names |= {PENDING: "no_reply", REJECTED: "other_error"}
    counts = collections.Counter(names[ledger.outcome[i]] for i in ids)
    return {"appends": len(ids), **counts}


def command(args: argparse.Namespace) -> str:
    """The command that repeats this campaign (the same roles and gaps)."""
    line = (
        f"walctl crashtest --kills {args.kills} --role {args.role} --in-flight {args.in_flight} "
        f"--interval {args.interval:g} --seed {args.seed} --keys {args.keys} "
        f"--snapshot-every {args.snapshot_every} --keep-entries {args.keep_entries} "
        f"--max-segment-bytes {args.max_segment_bytes}"
    )
    if args.max_back_to_service is not None:
        line += f" --max-back-to-service {args.max_back_to_service:g}"
    return line


def build_report(
    c: Campaign,
    found: Findings | None,
    log: dict | None,
    exit: int | None,
    roles: Sequence[str] = ROLES,
) -> dict:
    """The report of a campaign; `roles`: what its kills hit (walctl/crashcluster.py has others)."""
    led, args = c.ledger, c.args
    counts = collections.Counter(led.outcome)
    per_role = collections.Counter(k.role for k in c.kills)
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command(args),
        "weights": RANDOM_WEIGHTS if args.role == "random" else None,
        "node_argv": c.node_argv[1:],
        "duration_s": round(c.t_end - c.t0, 2),
        "appends": {
            "in_flight": args.in_flight,
            "sent": len(led),
            "acknowledged": counts[ACKED],
            "acknowledged_per_s": round(counts[ACKED] / max(1e-9, c.t_end - c.t0)),
            "error_13": counts[CRASHED],
            "error_0": counts[TIMED_OUT],
            "error_11": counts[UNAVAILABLE],
            "other_errors": counts[REJECTED],
            "unanswered": counts[PENDING],
            "unanswered_at_front_kill": sum(
                1
                for i in {i for k in c.kills if k.role == "front" for i in k.in_flight}
                if led.outcome[i] == PENDING
            ),
            "written_off": len(led.written_off),
            "probes": len(c.load.probes),
            "double_replies": len(led.double_replies),
        },
        "verdict": None,
        "log": None,
        "kills_per_role": {role: per_role[role] for role in roles},
        "restarts_per_role": None,
        "back_to_service": summarize_back(c.kills, roles),
        "kills": [
            {
                "n": k.n,
                "role": k.role,
                "pid": k.pid,
                "at_s": round(k.at - c.t0, 3),
                "back_to_service_ms": None if k.back_s is None else round(k.back_s * 1000, 1),
                "measured_by": k.measured_by,
                "recovery_ms": k.recovery_ms,
                "in_flight": in_flight_outcomes(led, k.in_flight),
            }
            for k in c.kills
        ],
        "node_exit_status": exit,
        "node_alerts": c.node.alerts,
    }
    if found is not None:
        report["verdict"] = {
            name: (len(value) if isinstance(value, list) else value)
            for name, value in found.__dict__.items()
        }
        report["verdict"]["examples"] = {n: getattr(found, n)[:10] for n in VIOLATIONS}
    if log is not None:
        if log["processes"]:  # a cluster's processes are not one supervisor's
            report["restarts_per_role"] = {r: log["processes"][r]["restarts"] for r in ROLES}
        end = log["next_offset"]
        report["log"] = {
            "first_offset": log["first_offset"],
            "next_offset": end,
            "offsets_read": sum(1 for i in c.history.at[:end] if i != UNSEEN),
            "tail_gaps": c.tail.gaps[:20],
            "tail_saw_end_move_back": c.tail.end_moved_back[:20],
            "not_ours": c.history.not_ours,
        }
    report["failures"] = c.failures + judge(report, args.max_back_to_service)
    report["passed"] = not report["failures"]
    return report


def print_report(r: dict) -> None:
    a, v, per_role = r["appends"], r["verdict"], r["kills_per_role"]
    roles = ", ".join(f"{role} {n}" for role, n in per_role.items() if n)
    weights = ""
    if r["weights"]:
        weights = " (random: " + ", ".join(f"{k} {w}%" for k, w in r["weights"].items()) + ")"
    lines = [
        f"walnode crashtest: {sum(per_role.values())} kills: {roles}{weights}",
        f"  {a['in_flight']} appends in flight for {r['duration_s']} s",
        f"  {r['command']}",
        "",
    ]
    rows = [("appends sent", a["sent"], "")]
    if v is not None:
        rows += [
            ("acknowledged", v["acknowledged"], f"{a['acknowledged_per_s']}/s"),
            ("  read at their offset", v["verified_in_log"], ""),
            ("  compacted before read", v["unchecked"], "covered by the state check only"),
            ("lost", v["lost"], "must be 0"),
            ("duplicated", v["duplicated"], "must be 0"),
            ("recovered", v["recovered"], "indefinite (13, 0, no reply), found in the log"),
            ("not durable", v["not_durable"], "indefinite, not in the log"),
        ]
        if v["unknown"]:
            rows.append(("unknown", v["unknown"], "indefinite, not found; the log read had gaps"))
    rows += [
        ("error 13 (crash)", a["error_13"], "indefinite"),
        ("error 0 (timeout)", a["error_0"], "indefinite"),
        ("error 11 (unavailable)", a["error_11"], "definite: not written"),
        ("other errors", a["other_errors"], "definite"),
        ("no reply", a["unanswered"], f"{a['unanswered_at_front_kill']} in flight at a front kill"),
    ]
    if v is not None:
        rows += [
            ("phantoms", v["phantoms"], "in the log, never sent or refused; must be 0"),
            ("misordered", v["misordered"], "offsets out of request order; must be 0"),
            ("state mismatches", v["state_mismatches"], f"{v['keys_checked']} keys; must be 0"),
        ]
    lines += [f"  {name:<26}{n:>10}  {note}".rstrip() for name, n, note in rows]
    if r["log"]:
        lg = r["log"]
        lines.append(
            f"  log: {lg['first_offset']}..{lg['next_offset']} retained at the end; "
            f"{lg['offsets_read']} of {lg['next_offset']} offsets read"
        )
    lines += [
        "",
        "back to service: writer, front: kill -> first ack of an append sent after it;",
        "                 compactor: kill -> first kv_get answered",
        f"  {'role':<16}{'kills':>6}{'p50 ms':>10}{'p99 ms':>10}{'worst ms':>10}",
    ]
    for role, b in r["back_to_service"].items():
        lines.append(
            f"  {role:<16}{b['kills']:>6}{b['p50_ms']:>10}{b['p99_ms']:>10}{b['worst_ms']:>10}"
        )
    lines.append(f"restarts counted by the supervisor: {r['restarts_per_role']}")
    lines.append(f"walnode exit status at end of input: {r['node_exit_status']}")
    lines += [f"  walnode: {line}" for line in r["node_alerts"][:10]]
    for name, examples in (v or {}).get("examples", {}).items():
        lines += [f"  {name}: {e}" for e in examples[:5]]
    lines += ["", "PASS" if r["passed"] else "FAIL: " + "; ".join(r["failures"])]
    print("\n".join(lines), flush=True)


KILL_COLORS = {"writer": "tab:red", "compactor": "tab:green", "front": "tab:purple"}


def write_png(path: str, c: Campaign, colors: dict[str, str] = KILL_COLORS) -> None:
    """Acknowledged appends/s in 50 ms bins; each kill a line, its downtime shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bin_s, span = 0.05, max(0.05, c.t_end - c.t0)
    bins = [0] * (int(span / bin_s) + 1)
    for i in range(len(c.ledger)):
        if c.ledger.outcome[i] == ACKED:
            b = int((c.ledger.replied_at[i] - c.t0) / bin_s)
            if 0 <= b < len(bins):
                bins[b] += 1
    fig, ax = plt.subplots(figsize=(min(60, max(10, span / 4)), 4.5))
    ax.plot([b * bin_s for b in range(len(bins))], [n / bin_s for n in bins], lw=0.7)
    labelled = set()
    for k in c.kills:
        name = f"kill {k.role}" if colors is KILL_COLORS else k.role
        label = None if k.role in labelled else name
        labelled.add(k.role)
        ax.axvline(k.at - c.t0, color=colors[k.role], lw=0.8, label=label)
        if k.back_at is not None:
            ax.axvspan(k.at - c.t0, k.back_at - c.t0, color=colors[k.role], alpha=0.12, lw=0)
    ax.set_xlabel("seconds")
    ax.set_ylabel(f"acknowledged appends/s ({bin_s * 1000:.0f} ms bins)")
    what = "faults" if colors is not KILL_COLORS else "kills"
    ax.set_title(f"walnode crashtest: {len(c.kills)} {what}, {c.args.in_flight} appends in flight")
    ax.set_xlim(0, span)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the command ----------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from walctl import (
        crashcluster,  # --cluster: the replicated campaign, in its own module
        powercut,  # --power-loss: the power-cut campaign, in its own module
    )

    powercut.add_arguments(p)
    crashcluster.add_arguments(p)
    p.add_argument("--kills", type=int, default=20, metavar="N", help="how many SIGKILLs (20)")
    p.add_argument(
        "--role",
        choices=[*ROLES, "random"],
        default="random",
        help="whom to kill; random (default): writer 70%%, compactor 15%%, front 15%%",
    )
    p.add_argument(
        "--in-flight", type=int, default=64, metavar="N", help="appends kept unanswered (64)"
    )
    p.add_argument(
        "--interval",
        type=float,
        default=0.5,
        metavar="S",
        help="mean seconds from one kill to the next, each uniform in 0.5x..1.5x (0.5)",
    )
    p.add_argument(
        "--seed", type=int, metavar="N", help="repeat a campaign's roles and gaps (default: random)"
    )
    p.add_argument(
        "--keys", type=int, default=1000, metavar="N", help="appends set k0..k<N-1> in turn (1000)"
    )
    p.add_argument(
        "--data-dir", metavar="DIR", help="a new or empty directory (default: a temporary one)"
    )
    p.add_argument("--keep-data", action="store_true", help="keep the temporary data directory")
    p.add_argument("--json", metavar="FILE", help="write the whole report as JSON")
    p.add_argument("--png", metavar="FILE", help="draw the timeline (needs walnode[chart])")
    p.add_argument("--node-log", metavar="FILE", help="walnode's stderr, timed, kills marked")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for CI logs)")
    p.add_argument(
        "--max-back-to-service",
        type=float,
        metavar="S",
        help="fail if a kill keeps the service down longer than S seconds",
    )
    p.add_argument(
        "--recovery-limit",
        type=float,
        default=10.0,
        metavar="S",
        help="give up if the service is not back S seconds after a kill (10)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=15.0,
        metavar="S",
        help="at the end, wait up to S seconds for outstanding replies (15)",
    )
    node = p.add_argument_group("the node's settings (small, so that compaction runs often)")
    node.add_argument("--snapshot-every", type=int, default=2000, metavar="N", help="(2000)")
    node.add_argument("--keep-entries", type=int, default=1000, metavar="N", help="(1000)")
    node.add_argument(
        "--max-segment-bytes", type=int, default=64 << 10, metavar="N", help="(65536)"
    )


def run(args: argparse.Namespace) -> int:
    """`walctl crashtest`: 0 if the verdict passes, 1 if not, 2 if it cannot run."""
    if args.power_loss:
        from walctl import powercut

        return powercut.run(args)
    if args.cluster:
        from walctl import crashcluster

        return crashcluster.run(args)
    problem = argument_problem(args)
    if problem is not None:
        return usage(problem)
    progress_bar = progress_factory(args.no_progress)
    if progress_bar is None:
        return usage("the progress bar needs tqdm: pip install 'walnode[tools]' (or --no-progress)")
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="walnode-crashtest-")
    print(f"walctl crashtest: data in {data_dir}, seed {args.seed}", file=sys.stderr)
    c = Campaign(args, data_dir)
    found = log = exit_status = None
    try:
        try:
            c.start()
            with progress_bar(total=args.kills, unit="kill") as progress:
                c.run_kills(progress)
        except CampaignAborted as err:
            c.failures.append(f"campaign stopped: {err}")
        if c.started and c.node.alive:
            try:
                log = c.finish()
                found = verify(c.ledger, c.history, log["next_offset"], log["kv"])
            except CampaignAborted as err:
                c.failures.append(f"verification stopped: {err}")
        exit_status = c.node.close()
    finally:
        c.node.kill()
    report = build_report(c, found, log, exit_status)
    print_report(report)
    if args.json:
        write_json(args.json, report)
    if args.png:
        write_png(args.png, c)
    if not report["passed"]:
        print("walnode's last stderr lines:\n" + "\n".join(c.node.stderr_tail), file=sys.stderr)
    passed = report["passed"]
    tidy(
        data_dir, given=bool(args.data_dir), keep=args.keep_data, passed=passed, command="crashtest"
    )
    return 0 if passed else 1


def argument_problem(args: argparse.Namespace) -> str | None:
    """Why the campaign cannot run with these arguments; None if it can."""
    if min(args.kills, args.in_flight, args.keys) < 1 or args.interval <= 0:
        return "--kills, --in-flight, --keys and --interval must be positive"
    if args.png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return "--png needs matplotlib: pip install 'walnode[chart]'"
    if args.data_dir and os.path.isdir(args.data_dir) and os.listdir(args.data_dir):
        return f"{args.data_dir} is not empty; give a new or empty directory"
    return None


class NoProgress:
    """Stands in for tqdm's bar under --no-progress (tqdm may not be installed)."""

    def __init__(self, **_: object) -> None:
        pass

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def update(self, n: int) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass


def progress_factory(disabled: bool) -> Callable[..., Any] | None:
    """tqdm, or NoProgress when disabled; None if tqdm is wanted but missing."""
    if disabled:
        return NoProgress
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def usage(text: str) -> int:
    print(f"walctl crashtest: {text}", file=sys.stderr)
    return 2
