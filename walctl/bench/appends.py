"""Drive a real walnode over its pipes with N wal_append requests in flight.

The node is started as a user starts it (`python node.py --data-dir DIR`,
JSON lines on stdin, replies on stdout). One thread, non-blocking pipes: as
soon as replies come back, as many new requests go out, so exactly N are
unanswered at any time (a closed loop). A request's latency runs from the
moment the client queued its line for the pipe to the moment the chunk
holding its reply was read: what a client of walnode sees.

Every reply is accounted for: an append counts as acknowledged only on its
`wal_append_ok`; errors, duplicate replies and replies to unknown msg_ids
are counted; at the end the node's `wal_info.next_offset` must equal the
number of acknowledged appends (the log starts empty), so the benchmark
cannot report acks the node did not give.
"""

from __future__ import annotations

import array
import json
import math
import os
import re
import select
import time
from dataclasses import dataclass, field

from actors import procfs
from walnode import LeanPipes, WalnodeError

PAYLOAD_BYTES = 100
KEYS = 10_000  # payloads are `set kNNNNN=vvv...`: a state machine of at most 10,000 keys
CONTROL_BASE = 10**12  # msg_ids of non-append requests (info, status, snapshot, compact)
REPLY_RE = re.compile(rb'"type": "(\w+)", "in_reply_to": (\d+)')
READ_CHUNK = 1 << 20
HOLD_FACTOR, HOLD_MIN_S = 10, 2.0  # a window with no ack waits for one max(10 x, 2 s) longer


class NodeFailed(Exception):
    """The node died, closed stdout, or answered a control request wrongly."""


def payload(i: int) -> str:
    head = f"set k{i % KEYS:05d}="
    return head + "v" * (PAYLOAD_BYTES - len(head))


# The request line for msg_id i is PREFIX + str(i) + SUFFIX[i % KEYS].
PREFIX = b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": '
SUFFIX = [f', "payload": "{payload(k)}"}}}}\n'.encode() for k in range(KEYS)]


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (None if it is gone)."""
    st = procfs.stat(pid)
    return None if st is None else st.cpu_seconds


@dataclass
class LevelResult:
    """One run at one in-flight level; latencies in seconds."""

    in_flight: int
    seconds: float  # the measured window (longer than asked if it held no ack: ClosedLoop)
    window_acks: int  # acknowledgements received inside the window
    latencies: array.array  # of the appends sent inside the window
    sent_times: array.array  # when each of those was sent (same order)
    acked: int = 0  # every wal_append_ok, warm-up and drain included
    sent: int = 0
    errors: int = 0
    first_error: str | None = None
    duplicates: int = 0
    unknown: int = 0
    cpu: dict = field(default_factory=dict)  # role -> CPU seconds / window seconds
    info_before: dict = field(default_factory=dict)
    info_after: dict = field(default_factory=dict)
    control: list = field(default_factory=list)  # snapshot/compact: dicts with start, end
    verified: bool = False
    verify_note: str = ""
    read_latencies: array.array = field(default_factory=lambda: array.array("d"))


class WalnodeDriver:
    """One walnode process tree, started fresh in `data_dir`, through the
    client's lean path (walnode.LeanPipes: no threads, the loop below reads
    and writes the pipes itself)."""

    def __init__(
        self,
        data_dir: str,
        node_args: list[str],
        stderr_path: str,
        command: list[str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")  # closed in close() and kill()
        self.pipes = LeanPipes.spawn(
            data_dir, node_args, stderr=self._stderr, command=command, cwd=cwd
        )
        self.proc = self.pipes.proc
        self.wfd, self.rfd = self.pipes.wfd, self.pipes.rfd
        self.next_id = 1  # append msg_ids: 1, 2, 3, ...
        self.next_control = CONTROL_BASE
        self.pids: dict[str, int] = {}

    # -- plumbing ----------------------------------------------------------

    def stderr_tail(self, chars: int = 2000) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode(errors="replace")[-chars:]
        except OSError:
            return ""

    def _fail(self, why: str) -> NodeFailed:
        return NodeFailed(f"{why}; walnode's stderr ends with:\n{self.stderr_tail()}")

    def _read(self) -> bytes:
        try:
            return self.pipes.read_chunk()
        except WalnodeError as err:
            raise self._fail(err.text) from None

    def call(self, body: dict, timeout: float = 30) -> dict:
        """Send one control request (nothing else in flight) and return its reply body."""
        msg_id = self.next_control
        self.next_control += 1
        try:
            reply = self.pipes.call(body, msg_id, timeout)
        except WalnodeError as err:
            raise self._fail(err.text) from None
        if self.pipes.unmatched:
            raise self._fail(
                f"unexpected reply while waiting for {body['type']}: {self.pipes.unmatched[0]!r}"
            )
        return reply

    def call_ok(self, body: dict, timeout: float = 30) -> dict:
        reply = self.call(body, timeout)
        if reply.get("type") != body["type"] + "_ok":
            raise self._fail(f"{body['type']} failed: {reply}")
        return reply

    def start(self) -> None:
        self.call_ok({"type": "init", "node_id": "n1", "node_ids": ["n1"]})
        status = self.call_ok({"type": "status"})
        self.pids = {p["role"]: p["pid"] for p in status["processes"] if p.get("pid")}
        self.pids.setdefault("supervisor", self.proc.pid)

    def close(self, timeout: float = 60) -> int:
        """End of input: walnode answers everything and exits (killed if not in time)."""
        try:
            return self.pipes.close(timeout)
        except WalnodeError:
            return self.proc.returncode
        finally:
            self._stderr.close()

    def kill(self) -> None:
        self.pipes.kill()
        self._stderr.close()

    def cpu_sample(self) -> dict[str, float | None]:
        sample = {role: proc_cpu_seconds(pid) for role, pid in self.pids.items()}
        sample["client"] = time.process_time()
        return sample

    # -- the load ----------------------------------------------------------

    def run_level(
        self,
        in_flight: int,
        seconds: float,
        warmup: float,
        *,
        snapshot_every: float | None = None,
        on_window: callable | None = None,
    ) -> LevelResult:
        """Keep `in_flight` appends unanswered for warmup + seconds, then drain.

        With `snapshot_every`, a wal_snapshot and then a wal_compact at its
        offset are issued during the window, the next one `snapshot_every`
        seconds after the previous compaction was answered. `on_window` is
        called once when the measured window starts (the profiler hooks in)."""
        info_before = self.call_ok({"type": "wal_info"})
        load = ClosedLoop(self, in_flight, warmup, seconds, snapshot_every, on_window)
        load.run()
        self.pipes.leftover = load.leftover
        self.next_id = load.next_id
        info_after = self.call_ok({"type": "wal_info"})
        window_s = load.t_end - load.t_win  # longer than `seconds` if it was held for an ack
        result = LevelResult(
            in_flight=in_flight,
            seconds=window_s,
            window_acks=load.window_acks,
            latencies=load.latencies,
            sent_times=load.sent_times,
            acked=load.acked,
            sent=load.next_id - load.first_id,
            errors=load.errors,
            first_error=load.first_error,
            duplicates=load.duplicates,
            unknown=load.unknown,
            cpu=cpu_share(load.cpu0, load.cpu1, window_s),
            info_before=info_before,
            info_after=info_after,
            control=load.control,
        )
        self._verify(result)
        return result

    def _control_line(self, msg_id: int, body: dict) -> bytes:
        self.next_control = max(self.next_control, msg_id + 1)
        return (
            json.dumps({"src": "c0", "dest": "n1", "body": {**body, "msg_id": msg_id}})
        ).encode() + b"\n"

    def _on_control_reply(self, buf, match, pending, control, out, t, snapshot_every):
        """A snapshot's reply starts the compaction at its offset; the
        compaction's reply ends the cycle and schedules the next one."""
        line_start = buf.rfind(b"\n", 0, match.start()) + 1
        line_end = buf.find(b"\n", match.end())
        body = json.loads(buf[line_start:line_end])["body"]
        if pending is None or body.get("in_reply_to") != pending["id"]:
            raise self._fail(f"unexpected control reply {body}")
        if body["type"] != pending["type"] + "_ok":
            raise self._fail(f"{pending['type']} failed under load: {body}")
        if pending["type"] == "wal_snapshot":
            pending["snapshot_s"] = t - pending["start"]
            pending["snapshot_offset"] = body["snapshot_offset"]
            pending["type"] = "wal_compact"
            pending["id"] = self.next_control
            compact = {"type": "wal_compact", "snapshot_at_offset": body["snapshot_offset"]}
            out.extend(self._control_line(pending["id"], compact))
            return pending, None
        pending["end"] = t
        pending["compact_s"] = t - pending["start"] - pending["snapshot_s"]
        pending["entries_freed"] = body.get("entries_before", 0) - body.get("entries_after", 0)
        control.append(pending)
        return None, t + snapshot_every

    def _verify(self, r: LevelResult) -> None:
        """The log holds exactly the acknowledged appends, nothing more or less."""
        before, after = r.info_before, r.info_after
        appended = after["next_offset"] - before["next_offset"]
        retained = after["first_offset"] + after["entries"] == after["next_offset"]
        problems = []
        if appended != r.acked:
            problems.append(f"the log grew by {appended} entries but {r.acked} appends were acked")
        if not retained:
            problems.append(f"wal_info is inconsistent: {after}")
        if r.acked + r.errors != r.sent:
            problems.append(f"{r.sent} sent, {r.acked} acked, {r.errors} errors")
        if r.duplicates or r.unknown:
            problems.append(f"{r.duplicates} duplicate and {r.unknown} unknown replies")
        if not after.get("fsynced", False):
            problems.append("wal_info says not every acknowledged entry is fsynced")
        r.verified = not problems
        r.verify_note = "; ".join(problems) or (
            f"wal_info.next_offset grew by exactly the {r.acked} acked appends; fsynced"
        )


def cpu_share(before: dict, after: dict, seconds: float) -> dict[str, float]:
    """Each role's CPU seconds per second of the window (roles gone in either sample left out)."""
    cpu = {}
    for role, start in before.items():
        end = after.get(role)
        if start is not None and end is not None:
            cpu[role] = round((end - start) / seconds, 3)
    return cpu


class ClosedLoop:
    """One run at one in-flight level: the phases (warm-up, window, drain),
    the appends sent and their replies matched. The loop body is split in
    steps, but each reply is still handled inline in `absorb` (the hot path)."""

    def __init__(
        self,
        driver: WalnodeDriver,
        in_flight: int,
        warmup: float,
        seconds: float,
        snapshot_every: float | None,
        on_window: callable | None,
    ) -> None:
        self.driver = driver
        self.in_flight = in_flight
        self.snapshot_every = snapshot_every
        self.on_window = on_window
        self.first_id = self.next_id = driver.next_id
        self.sent_at = array.array("d")
        self.answered = bytearray()
        self.latencies = array.array("d")
        self.sent_times = array.array("d")
        self.out = bytearray()
        self.acked = self.errors = self.duplicates = self.unknown = self.window_acks = 0
        self.first_error: str | None = None
        self.inflight = 0
        self.control: list[dict] = []
        self.ctl_pending: dict | None = None  # {"id", "type", "start", ...}
        self.next_ctl: float | None = None
        self.leftover = driver.pipes.leftover
        self.t_start = time.perf_counter()
        self.t_win = self.t_start + warmup
        self.t_end = self.t_win + seconds
        # a window without an ack is held open at most this long past its end (every append
        # answered with an error, say, would otherwise hold it forever)
        self.t_hold_limit = self.t_end + max(HOLD_FACTOR * seconds, HOLD_MIN_S)
        self.in_window = self.draining = False
        self.cpu0: dict = {}
        self.cpu1: dict = {}
        self.last_reply = self.t_start

    def run(self) -> None:
        perf = time.perf_counter
        while True:
            now = perf()
            self.advance_phase(now)
            if not self.draining and self.inflight < self.in_flight:
                self.top_up(now)
            self.maybe_snapshot(now)
            if self.draining and self.inflight == 0 and self.ctl_pending is None:
                return
            self.flush()
            chunk = self.wait_and_read()
            if chunk:
                self.absorb(chunk)

    def advance_phase(self, now: float) -> None:
        """Warm-up -> measured window -> drain, sampling CPU at both window edges.

        A window that holds no append both sent and acknowledged inside it (at 1 in flight, one
        fdatasync of a loaded disk can outlast a short window) stays open until the first is
        (`absorb` ends it there), and its length is what it took: a rate of 0 and no
        percentiles would say the node acknowledged nothing, when it acknowledged slowly."""
        if not self.in_window and not self.draining and now >= self.t_win:
            self.in_window = True
            self.cpu0 = self.driver.cpu_sample()
            if self.snapshot_every is not None:
                self.next_ctl = now
            if self.on_window is not None:
                self.on_window(self.driver.pids)
        if self.in_window and now >= self.t_end and not self.latencies:
            self.t_end = math.inf
        if self.t_end == math.inf and now >= self.t_hold_limit:
            self.t_end = now  # no ack came: the window closes with none
        if self.in_window and now >= self.t_end:
            self.in_window = False
            self.draining = True
            self.cpu1 = self.driver.cpu_sample()

    def top_up(self, now: float) -> None:
        """Queue as many appends as were answered, so `in_flight` stay unanswered."""
        k = self.in_flight - self.inflight
        next_id, suffix = self.next_id, SUFFIX
        parts = []
        for i in range(next_id, next_id + k):
            parts.append(PREFIX)
            parts.append(b"%d" % i)
            parts.append(suffix[i % KEYS])
        self.out += b"".join(parts)
        self.sent_at.extend([now] * k)
        self.answered.extend(bytes(k))
        self.next_id = next_id + k
        self.inflight += k

    def maybe_snapshot(self, now: float) -> None:
        if (
            self.in_window
            and self.ctl_pending is None
            and self.next_ctl is not None
            and now >= self.next_ctl
        ):
            self.ctl_pending = {
                "id": self.driver.next_control,
                "type": "wal_snapshot",
                "start": now,
            }
            line = self.driver._control_line(self.ctl_pending["id"], {"type": "wal_snapshot"})
            self.out.extend(line)

    def flush(self) -> None:
        if not self.out:
            return
        try:
            n = os.write(self.driver.wfd, self.out)
            del self.out[:n]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            raise self.driver._fail("walnode closed stdin") from None

    def wait_and_read(self) -> bytes:
        """A chunk of replies, or b"" after a second with nothing to read."""
        driver = self.driver
        writable = [driver.wfd] if self.out else []
        readable, _, _ = select.select([driver.rfd], writable, [], 1.0)
        if readable:
            return driver._read()
        if driver.proc.poll() is not None:
            raise driver._fail(f"walnode exited with status {driver.proc.returncode}")
        if time.perf_counter() - self.last_reply > 60:
            raise driver._fail(f"no reply for 60 s with {self.inflight} appends unanswered")
        return b""

    def absorb(self, chunk: bytes) -> None:
        """Match the whole reply lines in leftover + chunk; keep the partial last line."""
        t = self.last_reply = time.perf_counter()
        buf = self.leftover + chunk
        end = buf.rfind(b"\n") + 1
        self.leftover = buf[end:]
        answered, sent_at = self.answered, self.sent_at
        t_win, t_end, first_id = self.t_win, self.t_end, self.first_id
        # Counters as locals while matching: this loop runs once per reply.
        inflight, acked, errors = self.inflight, self.acked, self.errors
        duplicates, unknown, window_acks = self.duplicates, self.unknown, self.window_acks
        add_latency, add_sent_time = self.latencies.append, self.sent_times.append
        for match in REPLY_RE.finditer(buf, 0, end):
            rid = int(match.group(2))
            if rid >= CONTROL_BASE:
                self.ctl_pending, self.next_ctl = self.driver._on_control_reply(
                    buf, match, self.ctl_pending, self.control, self.out, t, self.snapshot_every
                )
                continue
            idx = rid - first_id
            if idx < 0 or idx >= len(answered):
                unknown += 1
                continue
            if answered[idx]:
                duplicates += 1
                continue
            answered[idx] = 1
            inflight -= 1
            if match.group(1) != b"wal_append_ok":
                errors += 1
                if self.first_error is None:
                    self.first_error = reply_line(buf, match)
                continue
            acked += 1
            st = sent_at[idx]
            if t_win <= st < t_end:
                add_latency(t - st)
                add_sent_time(st)
            if t_win <= t <= t_end:
                window_acks += 1
        self.inflight, self.acked, self.errors = inflight, acked, errors
        self.duplicates, self.unknown, self.window_acks = duplicates, unknown, window_acks
        if t_end == math.inf and self.latencies:  # a window held open: its first ack ends it
            self.t_end = t


def reply_line(buf: bytes, match: re.Match) -> str:
    """The whole line of `buf` around a reply `match`."""
    line_end = buf.find(b"\n", match.end())
    line_start = buf.rfind(b"\n", 0, match.start()) + 1
    return buf[line_start:line_end].decode(errors="replace")


def run_walnode_level(
    directory: str,
    in_flight: int,
    seconds: float,
    warmup: float,
    node_args: list[str],
    *,
    snapshot_every: float | None = None,
    on_window=None,
    tag: str = "",
    command: list[str] | None = None,
    reads_seconds: float = 0.0,
) -> LevelResult:
    """A fresh walnode on a fresh data directory, one level, then a clean stop.
    `command`: another node to start instead (a baseline checkout's node.py,
    or the null node), given the same flags; `reads_seconds`: then that long
    of one-at-a-time wal_reads (walctl/bench/reads.py). A node.py runs in its own
    directory: its children run as `python -m actors.ROLE`, which looks in
    the working directory first, so from anywhere else a baseline's
    supervisor would start this checkout's children."""
    data_dir = os.path.join(directory, f"walnode-{in_flight}{tag}")
    cwd = os.path.dirname(command[-1]) if command and command[-1].endswith(".py") else None
    driver = WalnodeDriver(data_dir, node_args, data_dir + ".stderr", command, cwd)
    try:
        driver.start()
        result = driver.run_level(
            in_flight, seconds, warmup, snapshot_every=snapshot_every, on_window=on_window
        )
        if reads_seconds:  # then lone reads of offset 0, nothing else in flight
            from walctl.bench import reads

            result.read_latencies = reads.lone_reads(driver.wfd, driver.rfd, reads_seconds)
        rc = driver.close()
        if rc != 0:
            raise driver._fail(f"walnode exited with status {rc} at end of input")
        return result
    finally:
        driver.kill()
