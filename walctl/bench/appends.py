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
import os
import re
import select
import time
from dataclasses import dataclass, field

from walnode import LeanPipes, WalnodeError, procfs

PAYLOAD_BYTES = 100
KEYS = 10_000  # payloads are `set kNNNNN=vvv...`: a state machine of at most 10,000 keys
CONTROL_BASE = 10**12  # msg_ids of non-append requests (info, status, snapshot, compact)
REPLY_RE = re.compile(rb'"type": "(\w+)", "in_reply_to": (\d+)')
READ_CHUNK = 1 << 20


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
    seconds: float  # the measured window
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


class WalnodeDriver:
    """One walnode process tree, started fresh in `data_dir`, through the
    client's lean path (walnode.LeanPipes: no threads, the loop below reads
    and writes the pipes itself)."""

    def __init__(self, data_dir: str, node_args: list[str], stderr_path: str) -> None:
        self.data_dir = data_dir
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 - closed in kill()
        self.pipes = LeanPipes.spawn(data_dir, node_args, stderr=self._stderr)
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
        first_id = self.next_id
        sent_at = array.array("d")
        answered = bytearray()
        latencies = array.array("d")
        sent_times = array.array("d")
        out = bytearray()
        acked = errors = duplicates = unknown = window_acks = 0
        first_error: str | None = None
        inflight = 0
        control: list[dict] = []
        ctl_pending: dict | None = None  # {"id", "type", "start", ...}
        next_ctl = None
        wfd, rfd = self.wfd, self.rfd
        prefix, suffix = PREFIX, SUFFIX
        leftover = self.pipes.leftover
        finditer = REPLY_RE.finditer
        perf = time.perf_counter

        t_start = perf()
        t_win = t_start + warmup
        t_end = t_win + seconds
        in_window = draining = False
        cpu0: dict = {}
        cpu1: dict = {}
        next_id = self.next_id
        last_reply = t_start

        while True:
            now = perf()
            if not in_window and not draining and now >= t_win:
                in_window = True
                cpu0 = self.cpu_sample()
                if snapshot_every is not None:
                    next_ctl = now
                if on_window is not None:
                    on_window(self.pids)
            if in_window and now >= t_end:
                in_window = False
                draining = True
                cpu1 = self.cpu_sample()
            if not draining and inflight < in_flight:
                k = in_flight - inflight
                parts = []
                for i in range(next_id, next_id + k):
                    parts.append(prefix)
                    parts.append(b"%d" % i)
                    parts.append(suffix[i % KEYS])
                out += b"".join(parts)
                sent_at.extend([now] * k)
                answered.extend(bytes(k))
                next_id += k
                inflight += k
            if in_window and ctl_pending is None and next_ctl is not None and now >= next_ctl:
                ctl_pending = {"id": self.next_control, "type": "wal_snapshot", "start": now}
                out.extend(self._control_line(ctl_pending["id"], {"type": "wal_snapshot"}))
            if draining and inflight == 0 and ctl_pending is None:
                break
            if out:
                try:
                    n = os.write(wfd, out)
                    del out[:n]
                except BlockingIOError:
                    pass
                except BrokenPipeError:
                    raise self._fail("walnode closed stdin") from None
            readable, _, _ = select.select([rfd], [wfd] if out else [], [], 1.0)
            if not readable:
                if self.proc.poll() is not None:
                    raise self._fail(f"walnode exited with status {self.proc.returncode}")
                if perf() - last_reply > 60:
                    raise self._fail(f"no reply for 60 s with {inflight} appends unanswered")
                continue
            chunk = self._read()
            if not chunk:
                continue
            t = last_reply = perf()
            buf = leftover + chunk
            end = buf.rfind(b"\n") + 1
            leftover = buf[end:]
            for match in finditer(buf, 0, end):
                rid = int(match.group(2))
                if rid >= CONTROL_BASE:
                    ctl_pending, next_ctl = self._on_control_reply(
                        buf, match, ctl_pending, control, out, t, snapshot_every
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
                    if first_error is None:
                        line_end = buf.find(b"\n", match.end())
                        line_start = buf.rfind(b"\n", 0, match.start()) + 1
                        first_error = buf[line_start:line_end].decode(errors="replace")
                    continue
                acked += 1
                st = sent_at[idx]
                if t_win <= st < t_end:
                    latencies.append(t - st)
                    sent_times.append(st)
                if t_win <= t <= t_end:
                    window_acks += 1

        self.pipes.leftover = leftover
        self.next_id = next_id
        info_after = self.call_ok({"type": "wal_info"})
        cpu = {}
        for role, before in cpu0.items():
            after = cpu1.get(role)
            if before is not None and after is not None:
                cpu[role] = round((after - before) / seconds, 3)
        result = LevelResult(
            in_flight=in_flight,
            seconds=seconds,
            window_acks=window_acks,
            latencies=latencies,
            sent_times=sent_times,
            acked=acked,
            sent=next_id - first_id,
            errors=errors,
            first_error=first_error,
            duplicates=duplicates,
            unknown=unknown,
            cpu=cpu,
            info_before=info_before,
            info_after=info_after,
            control=control,
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
) -> LevelResult:
    """A fresh walnode on a fresh data directory, one level, then a clean stop."""
    data_dir = os.path.join(directory, f"walnode-{in_flight}{tag}")
    driver = WalnodeDriver(data_dir, node_args, data_dir + ".stderr")
    try:
        driver.start()
        result = driver.run_level(
            in_flight, seconds, warmup, snapshot_every=snapshot_every, on_window=on_window
        )
        rc = driver.close()
        if rc != 0:
            raise driver._fail(f"walnode exited with status {rc} at end of input")
        return result
    finally:
        driver.kill()
