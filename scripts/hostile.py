"""Hostile load on a walnode checkout: kills and stop signals under 1000
appends in flight, and a count of replies per msg_id.

    python scripts/hostile.py kill --node NODE --role writer|front|compactor [--kills N]
    python scripts/hostile.py signal --node NODE --signal TERM|INT [--group]
    python scripts/hostile.py restart --node NODE   (a restart racing appends)
    python scripts/hostile.py kvload --node NODE    (kv_get latency under append load)

NODE is a checkout's node.py (its .venv runs it). Every reply line is read raw;
the verdict lists each violation: a cut or non-JSON line, a reply msg_id
repeated, an append with no reply or two, an acknowledged offset given twice or
holding another payload than the one acknowledged (read back with that
checkout's `walctl dump`), and for a stop signal: exit status, requests read
but unanswered (what was answered must be a prefix of the stream), errors
where a graceful stop owes success, and acknowledged appends against the
log's next offset. Exit 0: no violation.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from wal.fsutil import write_all  # noqa: E402
from walctl.differential.runner import python_for, read_lines, spawn_node  # noqa: E402

STATUS_IDS = 10**12
KEYS = 100
APPEND = b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": %d, '
APPEND += b'"payload": "set k%d=%d"}}\n'
INIT = b'{"src": "c0", "dest": "n1", "body": {"type": "init", "msg_id": %d, "node_id": "n1"}}\n'
KV_GET = b'{"src": "c1", "dest": "n1", "body": {"type": "kv_get", "msg_id": %d, "key": "k7"}}\n'


def append_line(i: int) -> bytes:
    return APPEND % (i, i % KEYS, i)


class Node:
    """A walnode in its own process group, fed by a pump that keeps `in_flight`
    appends unanswered, its stdout read raw by a thread."""

    def __init__(self, node_py: str, data_dir: str, workdir: str, flags: list[str]) -> None:
        self.node_py = node_py
        self.data_dir = data_dir
        self.stderr_path = os.path.join(workdir, "stderr")
        self.proc = spawn_node(node_py, data_dir, flags, workdir)
        self.lines: list[bytes] = []
        self.partial = b""
        self.replies: dict[object, list[dict]] = {}
        self.bad_lines: list[bytes] = []
        self.answered_appends = 0
        self.cond = threading.Condition()
        self.sent = 0
        self.stop_pumping = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.status_n = 0

    def _read(self) -> None:
        for complete, rest in read_lines(self.proc.stdout.fileno()):
            with self.cond:
                for line in complete:
                    self.lines.append(line)
                    try:
                        body = json.loads(line)["body"]
                        key = body["in_reply_to"]
                    except (ValueError, KeyError, TypeError):
                        self.bad_lines.append(line)
                        continue
                    self.replies.setdefault(key, []).append(body)
                    if type(key) is int and key < STATUS_IDS:
                        self.answered_appends += 1
                self.partial = rest
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def write(self, data: bytes) -> None:
        write_all(self.proc.stdin.fileno(), data)

    def call(self, line: bytes, msg_id: int, timeout: float = 20) -> dict | None:
        self.write(line)
        deadline = time.monotonic() + timeout
        with self.cond:
            while msg_id not in self.replies:
                if time.monotonic() > deadline or not self.reader.is_alive():
                    return None
                self.cond.wait(0.2)
            return self.replies[msg_id][0]

    def init(self) -> None:
        reply = self.call(INIT % (STATUS_IDS - 1), STATUS_IDS - 1)
        assert reply is not None and reply["type"] == "init_ok", reply

    def pids(self) -> dict[str, int]:
        self.status_n += 1
        msg_id = STATUS_IDS + self.status_n
        line = b'{"src": "c1", "dest": "n1", "body": {"type": "status", "msg_id": %d}}\n' % msg_id
        reply = self.call(line, msg_id)
        if reply is None or reply.get("type") != "status_ok":
            return {}
        return {p["role"]: p["pid"] for p in reply["processes"] if p.get("pid")}

    def pump(self, appends: int, in_flight: int, first: int = 1) -> threading.Thread:
        def run() -> None:
            i = first
            try:
                while i < first + appends and not self.stop_pumping.is_set():
                    with self.cond:
                        while self.sent - self.answered_appends >= in_flight:
                            if self.stop_pumping.is_set() or not self.reader.is_alive():
                                return
                            self.cond.wait(0.05)
                    n = min(64, first + appends - i)
                    self.write(b"".join(append_line(j) for j in range(i, i + n)))
                    with self.cond:
                        self.sent += n
                    i += n
            except (BrokenPipeError, OSError):
                return

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def finish(self, timeout: float = 60, close: bool = True) -> int | None:
        if close:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.reader.join(10)
        return code

    def stderr_tail(self) -> str:
        with open(self.stderr_path, errors="replace") as f:
            return f.read()[-3000:]


def dump(node_py: str, data_dir: str) -> dict[int, str]:
    out = subprocess.run(
        [python_for(node_py), "-m", "walctl", "dump", data_dir],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.abspath(node_py)),
        timeout=120,
    )
    entries = {}
    for line in out.stdout.splitlines():
        entry = json.loads(line)
        entries[entry["offset"]] = entry.get("payload")
    return entries


def append_verdict(
    node: Node, ids: range, allow_missing: int = 0, compacted: bool = False
) -> list[str]:
    """Violations in the replies to appends `ids` and in the log (`compacted`:
    only the offsets from the log's first one on are looked up)."""
    found = []
    if node.partial:
        found.append(f"stdout ends in a cut line: {node.partial[:200]!r}")
    for line in node.bad_lines[:5]:
        found.append(f"a line that is not a reply: {line[:200]!r}")
    reply_ids = Counter()
    for line in node.lines:
        try:
            reply_ids[json.loads(line)["body"]["msg_id"]] += 1
        except (ValueError, KeyError, TypeError):
            pass
    repeated = [k for k, n in reply_ids.items() if n > 1]
    if repeated:
        found.append(f"{len(repeated)} reply msg_ids repeated, e.g. {repeated[:5]}")
    missing = [i for i in ids if i not in node.replies]
    doubled = [i for i in ids if len(node.replies.get(i, [])) > 1]
    if len(missing) > allow_missing:
        found.append(
            f"{len(missing)} appends never answered (allowed {allow_missing}): {missing[:10]}"
        )
    if doubled:
        found.append(
            f"{len(doubled)} appends answered twice: {doubled[:5]} {node.replies[doubled[0]]}"
        )
    acked = {
        i: node.replies[i][0]["offset"]
        for i in ids
        if i in node.replies and node.replies[i][0]["type"] == "wal_append_ok"
    }
    offsets = Counter(acked.values())
    twice = [o for o, n in offsets.items() if n > 1]
    if twice:
        found.append(f"{len(twice)} offsets acknowledged to two appends: {twice[:5]}")
    log = dump(node.node_py, node.data_dir)
    first = min(log, default=0) if compacted else 0
    wrong = [
        (i, o, log.get(o))
        for i, o in acked.items()
        if o >= first and log.get(o) != f"set k{i % KEYS}={i}"
    ]
    if wrong:
        found.append(
            f"{len(wrong)} acknowledged appends not in the log as acknowledged: {wrong[:5]}"
        )
    codes = Counter(r[0].get("code", "ok") for i, r in node.replies.items() if i in ids)
    print(
        f"  appends sent {node.sent}, answered {sum(1 for i in ids if i in node.replies)}, "
        f"acked {len(acked)}, replies by code {dict(codes)}, log entries {len(log)}, "
        f"missing {len(missing)}"
    )
    return found


def cmd_kill(args: argparse.Namespace, workdir: str) -> list[str]:
    node = Node(args.node, os.path.join(workdir, "data"), workdir, args.flags)
    node.init()
    pump = node.pump(args.appends, args.in_flight)
    killed = 0
    for _ in range(args.kills):
        time.sleep(args.interval)
        pids = node.pids()
        pid = pids.get(args.role)
        if pid is None:
            continue
        os.kill(pid, signal.SIGKILL)
        killed += 1
        print(f"  killed {args.role} pid {pid}", flush=True)
    pump.join(120)
    time.sleep(2)  # let the last restart finish before end of input
    code = node.finish()
    found = [] if code == 0 else [f"exit status {code}"]
    allow = 40 * killed if args.role == "front" else 0  # DESIGN: one PIPE_BUF chunk per front kill
    compacting = any(f.startswith("--snapshot-every") for f in args.flags)
    found += append_verdict(node, range(1, node.sent + 1), allow, compacted=compacting)
    if found:
        found.append(node.stderr_tail())
    return found


def cmd_signal(args: argparse.Namespace, workdir: str) -> list[str]:
    node = Node(args.node, os.path.join(workdir, "data"), workdir, args.flags)
    node.init()
    node.pump(args.appends, args.in_flight)
    time.sleep(args.after)
    sig = {"TERM": signal.SIGTERM, "INT": signal.SIGINT, "HUP": signal.SIGHUP}[args.signal]
    with node.cond:
        in_flight = node.sent - node.answered_appends
    if args.group:
        os.killpg(node.proc.pid, sig)
    else:
        os.kill(node.proc.pid, sig)
    node.stop_pumping.set()
    print(f"  SIG{args.signal} with {in_flight} appends in flight", flush=True)
    code = node.finish(close=False)
    found = [] if code == 0 else [f"exit status {code}, expected 0"]
    answered = sorted(i for i in node.replies if type(i) is int and i < STATUS_IDS - 1)
    if answered != list(range(1, len(answered) + 1)):
        gaps = sorted(set(range(1, (answered or [0])[-1] + 1)) - set(answered))
        found.append(
            f"the answered appends are not a prefix of the stream: {len(gaps)} gaps: {gaps[:10]}"
        )
    errors = [
        r[0]
        for i, r in node.replies.items()
        if i in set(answered) and r[0]["type"] != "wal_append_ok"
    ]
    if errors:
        found.append(
            f"{len(errors)} appends answered with an error in a graceful stop: {errors[:3]}"
        )
    found += append_verdict(node, range(1, len(answered) + 1))
    log_next = max(dump(node.node_py, node.data_dir), default=-1) + 1
    acked = sum(1 for i in answered if node.replies[i][0]["type"] == "wal_append_ok")
    if acked != log_next:
        found.append(f"{acked} appends acknowledged, the log's next offset is {log_next}")
    if found:
        found.append(node.stderr_tail())
    return found


def cmd_restart(args: argparse.Namespace, workdir: str) -> list[str]:
    """Appends acknowledged, a graceful stop (or kill -9 of the supervisor), and a
    new walnode on the same directory fed its next appends in the same write as
    its init, before it could have recovered."""
    data = os.path.join(workdir, "data")
    found = []
    first = 1
    for round_ in range(args.rounds):
        node = Node(args.node, data, workdir, args.flags)
        batch = INIT % (STATUS_IDS - 1)
        batch += b"".join(append_line(i) for i in range(first, first + args.appends))
        node.write(batch)
        deadline = time.monotonic() + 60
        with node.cond:
            while node.answered_appends < args.appends and time.monotonic() < deadline:
                node.cond.wait(0.2)
        if round_ % 2:
            os.killpg(node.proc.pid, signal.SIGKILL)
            code = node.finish(close=False)
        else:
            code = node.finish()
            if code != 0:
                found.append(f"round {round_}: exit status {code}")
        print(f"  round {round_}: {node.answered_appends} answered, exit {code}", flush=True)
        found += append_verdict(node, range(first, first + args.appends))
        acked = [
            node.replies[i][0]["offset"]
            for i in range(first, first + args.appends)
            if i in node.replies and node.replies[i][0]["type"] == "wal_append_ok"
        ]
        if acked != list(range(first - 1, first - 1 + args.appends)):
            found.append(f"round {round_}: offsets not {first - 1}.. in order: {acked[:5]}...")
        first += args.appends
        if found:
            found.append(node.stderr_tail())
            break
    return found


def r_ok(node: Node, msg_id: int) -> bool:
    return node.replies[msg_id][0]["type"] == "wal_append_ok"


def cmd_kvload(args: argparse.Namespace, workdir: str) -> list[str]:
    """kv_get (the compactor) every 0.2 s while 1000 appends stay in flight: each
    must be answered (a value, or 20 before k7 is set); the latencies are printed."""
    node = Node(args.node, os.path.join(workdir, "data"), workdir, args.flags)
    node.init()
    pump = node.pump(args.appends, args.in_flight)
    latencies, found = [], []
    n = 0
    while pump.is_alive() and n < args.gets:
        n += 1
        msg_id = STATUS_IDS // 2 + n
        with node.cond:  # read-your-writes: k7's newest acknowledged set before the kv_get
            acked = [i for i, r in node.replies.items() if type(i) is int and i < STATUS_IDS]
            seen = max((i for i in acked if i % KEYS == 7 and r_ok(node, i)), default=None)
        began = time.monotonic()
        reply = node.call(KV_GET % msg_id, msg_id, timeout=30)
        latencies.append(time.monotonic() - began)
        if reply is None or reply["type"] != "kv_get_ok" and reply.get("code") != 20:
            found.append(f"kv_get {n}: {reply}")
        elif reply["type"] == "kv_get_ok":
            with node.cond:
                sent = node.sent  # the appends sent by the time it was answered
            value = int(reply["value"])
            if value % KEYS != 7 or (seen is not None and value < seen) or value > sent + 64:
                found.append(f"kv_get {n}: k7={value}, its newest acknowledged set was {seen}")
        elif seen is not None:
            found.append(f"kv_get {n}: k7 does not exist, but set {seen} was acknowledged")
        time.sleep(0.2)
    node.stop_pumping.set()
    pump.join(60)
    code = node.finish()
    latencies.sort()
    if latencies:
        p50 = latencies[len(latencies) // 2] * 1000
        worst = latencies[-1] * 1000
        print(f"  {len(latencies)} kv_gets under load: p50 {p50:.0f} ms, max {worst:.0f} ms")
    if code != 0:
        found.append(f"exit status {code}")
    return found


def cmd_compact(args: argparse.Namespace, workdir: str) -> list[str]:
    """wal_snapshot then wal_compact at the snapshot's offset minus a random
    0..300 (inside the active segment mostly) in a loop, while `in_flight`
    appends stay unanswered and wal_read/wal_scan ask for the offsets around
    the compaction point as it runs. Every read must answer the payload that
    offset was acknowledged with, or error 20 (compacted away, or not yet
    written); every compaction is answered ok, every append once."""
    import random

    rng = random.Random(args.seed)
    node = Node(args.node, os.path.join(workdir, "data"), workdir, args.flags)
    node.init()
    pump = node.pump(args.appends, args.in_flight)
    found: list[str] = []
    base = STATUS_IDS // 4
    n = 0
    compactions = reads = 0
    while pump.is_alive() and compactions < args.rounds:
        n += 1
        snap = node.call(
            b'{"src": "c1", "dest": "n1", "body": {"type": "wal_snapshot", "msg_id": %d}}\n'
            % (base + 10 * n),
            base + 10 * n,
            timeout=30,
        )
        if snap is None or snap["type"] != "wal_snapshot_ok":
            continue
        at = max(0, snap["snapshot_offset"] - rng.randrange(300))
        lines = [
            b'{"src": "c1", "dest": "n1", "body": {"type": "wal_compact", "msg_id": %d, '
            b'"snapshot_at_offset": %d}}\n' % (base + 10 * n + 1, at)
        ]
        asked = []
        for k in range(2, 9):
            offset = max(0, at + rng.randrange(-50, 50))
            asked.append((base + 10 * n + k, offset))
            if k % 3:
                lines.append(
                    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": %d, '
                    b'"offset": %d}}\n' % (base + 10 * n + k, offset)
                )
            else:
                lines.append(
                    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_scan", "msg_id": %d, '
                    b'"from_offset": %d, "max_entries": 100}}\n' % (base + 10 * n + k, offset)
                )
        node.write(b"".join(lines))
        compact = node.call(b"", base + 10 * n + 1, timeout=30)
        compactions += 1
        if compact is None or compact["type"] != "wal_compact_ok":
            found.append(f"compact at {at}: {compact}")
        for msg_id, offset in asked:
            reply = node.call(b"", msg_id, timeout=30)
            reads += 1
            found += check_read(node, offset, reply)
    node.stop_pumping.set()
    pump.join(60)
    code = node.finish()
    found += [] if code == 0 else [f"exit status {code}"]
    found += append_verdict(node, range(1, node.sent + 1), compacted=True)
    print(f"  {compactions} compactions, {reads} reads and scans beside them")
    return found


def check_read(node: Node, offset: int, reply: dict | None) -> list[str]:
    """A wal_read/wal_scan reply beside the acknowledged appends: each payload
    given at an offset is the one acknowledged there; 20 only below the log."""
    if reply is None:
        return [f"read/scan of {offset}: no reply"]
    with node.cond:
        by_offset = {
            r[0]["offset"]: i
            for i, r in node.replies.items()
            if type(i) is int and i < STATUS_IDS // 4 and r[0]["type"] == "wal_append_ok"
        }
    got = []
    if reply["type"] == "wal_read_ok":
        got = [(reply["offset"], reply["payload"])]
    elif reply["type"] == "wal_scan_ok":
        got = [(e["offset"], e["payload"]) for e in reply["entries"]]
    elif reply.get("code") != 20:
        return [f"read/scan of {offset}: {reply}"]
    bad = []
    for at, payload in got:
        i = by_offset.get(at)
        if i is not None and payload != f"set k{i % KEYS}={i}":
            bad.append(f"offset {at} read {payload!r}, acknowledged as append {i}")
    return bad


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    kill = sub.add_parser("kill")
    kill.add_argument("--role", choices=["writer", "front", "compactor"], required=True)
    kill.add_argument("--kills", type=int, default=5)
    kill.add_argument("--interval", type=float, default=1.0)
    sig = sub.add_parser("signal")
    sig.add_argument("--signal", choices=["TERM", "INT", "HUP"], default="TERM")
    sig.add_argument("--group", action="store_true", help="to the process group, as a terminal")
    sig.add_argument("--after", type=float, default=1.5)
    restart = sub.add_parser("restart")
    restart.add_argument("--rounds", type=int, default=6)
    kvload = sub.add_parser("kvload")
    kvload.add_argument("--gets", type=int, default=50)
    compact = sub.add_parser("compact")
    compact.add_argument("--rounds", type=int, default=40)
    compact.add_argument("--seed", type=int, default=1)
    for each in (kill, sig, restart, kvload, compact):
        each.add_argument("--node", required=True)
        each.add_argument("--appends", type=int, default=30000)
        each.add_argument("--in-flight", type=int, default=1000)
        each.add_argument("--flag", dest="flags", action="append", default=[])
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="hostile-") as workdir:
        command = {
            "kill": cmd_kill,
            "signal": cmd_signal,
            "restart": cmd_restart,
            "kvload": cmd_kvload,
            "compact": cmd_compact,
        }[args.command]
        found = command(args, workdir)
    for line in found:
        print(f"VIOLATION: {line}")
    print("OK" if not found else f"{len(found)} violations")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
