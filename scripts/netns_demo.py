"""walnode across hosts, on one machine: network namespaces as hosts.

    python scripts/netns_demo.py [--appends N] [--rate R] [--keep]   # as root
    python scripts/netns_demo.py --check        # can this machine run it?

It builds four network namespaces: three "hosts" and a "switch" that holds
a bridge, each host joined to the bridge by a veth pair:

    wn<pid>-log  10.77.0.1  node.py --roles writer,compactor
                            --listen tcp://10.77.0.1:7000 (compactor :7001)
    wn<pid>-a    10.77.0.2  node.py --connect tcp://10.77.0.1:7000   (node n1)
    wn<pid>-b    10.77.0.3  node.py --connect tcp://10.77.0.1:7000   (node n2)
    wn<pid>-sw   bridge br0, one port per host

Nothing is added to the root namespace (no bridge, no address, no route),
so the demo cannot clash with the machine's own network, and deleting the
four namespaces removes every interface it made.

CURVE keys come from `walctl keygen`, and each host gets only the files it
needs (docs/DEPLOY.md). Both fronts are initialised as nodes of one
Maelstrom cluster (node_ids ["n1", "n2"]), then both append concurrently at
--rate appends per second each. Once each has N/2 acknowledged, the writer
process on the log host is killed with SIGKILL while appends are in flight;
the load goes on. The demo prints what each front saw (acks before and
after, errors 13 and 11, how long until appends were acknowledged again),
then checks the log: offsets dense from 0, each acknowledged append at its
offset, each front's offsets in its own order, nothing duplicated, every
error 11 absent from the log, and each front reads the other's entries.
It stops everything cleanly and runs `walctl verify` on the data directory.

Exit status: 0 when every check passed, 1 when one failed (or walnode
misbehaved), 2 when this machine cannot run the demo (not root, no `ip`,
namespaces or veth pairs refused). Processes are stopped by pid and the
namespaces deleted in every case, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from actors import procfs
from actors.codes import Code
from walnode import Client

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBNET = "10.77.0"  # inside the namespaces only: it cannot clash with the host's network
PORT = 7000
HOSTS = {"log": 1, "a": 2, "b": 3}  # host -> last octet
FRONTS = {"a": "n1", "b": "n2"}  # front host -> Maelstrom node id
# A request's deadline in the client: long, since the demo waits with its own
# limits and records a reply that comes late all the same.
LOAD_TIMEOUT = 120.0
NODE_IDS = ["n1", "n2"]
EXIT_FAIL, EXIT_UNSUPPORTED = 1, 2

T0 = time.monotonic()


class DemoError(Exception):
    """Something went wrong that ends the demo (with the reason)."""


def now() -> float:
    return time.monotonic()


def say(text: str = "", t: float | None = None) -> None:
    if t is not None:
        text = f"[{t - T0:6.3f}s] {text}"
    print(text, flush=True)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise DemoError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc


def python() -> str:
    """The interpreter for walnode's processes: this one if it has pyzmq,
    else the checkout's .venv."""
    try:
        import zmq  # noqa: F401

        return sys.executable
    except ImportError:
        venv = os.path.join(REPO, ".venv", "bin", "python")
        return venv if os.path.exists(venv) else sys.executable


# -- can this machine run it? -------------------------------------------------


def probe() -> str | None:
    """None if namespaces, veth pairs and bridges can be made here; else why not."""
    if os.geteuid() != 0:
        return "needs root (ip netns add); run it as root"
    if shutil.which("ip") is None:
        return "needs the `ip` command (iproute2)"
    name = f"wn{os.getpid()}-probe"
    try:
        made = ip("netns", "add", name, check=False)
        if made.returncode != 0:
            return f"cannot create a network namespace: {made.stderr.strip()}"
        steps = [
            ["-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1"],
            ["-n", name, "link", "add", "br0", "type", "bridge"],
            ["-n", name, "link", "set", "lo", "up"],
        ]
        for step in steps:
            done = ip(*step, check=False)
            if done.returncode != 0:
                return f"`ip {' '.join(step)}` failed: {done.stderr.strip()}"
        run = subprocess.run(
            ["ip", "netns", "exec", name, python(), "-c", "pass"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if run.returncode != 0:
            return f"`ip netns exec` failed: {run.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as err:
        return f"probing network namespaces failed: {err}"
    finally:
        ip("netns", "del", name, check=False)
    return None


# -- processes -----------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_demo() -> None:
    """In the child before exec: SIGTERM it if the demo dies (even by SIGKILL).
    Kept across `ip netns exec`, which execs the command in the same process."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def writer_pid(supervisor_pid: int) -> int | None:
    for pid, argv in procfs.children(supervisor_pid).items():
        if any("actors.writer" in a for a in argv):
            return pid
    return None


def listening(pid: int, address: str, port: int) -> bool:
    """True if a tcp socket listens on address:port in pid's network namespace."""
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return False
    for row in rows:
        fields = row.split()
        local, state = fields[1], fields[3]
        host_hex, port_hex = local.split(":")
        host = socket.inet_ntoa(struct.pack("<I", int(host_hex, 16)))
        if state == "0A" and int(port_hex, 16) == port and host in (address, "0.0.0.0"):
            return True
    return False


class Front:
    """One `node.py --connect ...` in a front namespace, driven over its pipes
    by a walnode.Client; every request's send and reply times are kept."""

    def __init__(self, host: str, node_id: str, argv: list[str], stderr_path: str) -> None:
        self.host, self.node_id = host, node_id
        self.stderr_path = stderr_path
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=REPO,
                preexec_fn=_die_with_demo,
                start_new_session=True,  # a Ctrl-C reaches the demo only: it stops them in order
            )
        self.cond = threading.Condition()
        self.sent: dict[int, tuple[float, dict]] = {}  # msg_id -> (time, body)
        self.replies: dict[int, tuple[float, dict]] = {}  # in_reply_to -> (time, body)
        self.duplicates: list[dict] = []
        self.pending_appends: set[int] = set()
        self.acked = 0  # wal_append_ok so far
        self.eof = False
        self.client = Client(
            self.proc,
            src=f"c-{node_id}",
            dest=node_id,
            timeout=LOAD_TIMEOUT,
            on_unmatched=self._unmatched,
            on_eof=self._eof,
        )

    def _replied(self, mid: int, body: dict) -> None:
        t = now()
        with self.cond:
            if mid in self.replies:
                self.duplicates.append(body)
            else:
                self.replies[mid] = (t, body)
                if mid in self.pending_appends:
                    self.pending_appends.discard(mid)
                    if body.get("type") == "wal_append_ok":
                        self.acked += 1
            self.cond.notify_all()

    def _unmatched(self, message: dict, raw: bytes, t: float) -> None:
        body = message.get("body") or {"type": "unparseable", "line": raw.decode(errors="replace")}
        irt = body.get("in_reply_to")
        if isinstance(irt, int) and irt in self.sent:
            self._replied(irt, body)  # a second reply, or one after the client's deadline
        else:
            with self.cond:
                self.duplicates.append(body)

    def _eof(self) -> None:
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def _done(self, future: Future) -> None:
        if future.exception() is None:  # else: no reply yet (deadline) or stdout closed
            self._replied(future.msg_id, future.result())

    def send(self, body: dict) -> int:
        t = now()
        try:
            future = self.client.request_async(body)
        except (OSError, ValueError) as err:  # ValueError: we closed it (cleanup)
            raise DemoError(f"front {self.node_id}: cannot write its stdin: {err}") from None
        mid = future.msg_id
        with self.cond:  # before its reply is recorded: _done is added below
            self.sent[mid] = (t, body)
            if body["type"] == "wal_append":
                self.pending_appends.add(mid)
        future.add_done_callback(self._done)
        return mid

    def wait(self, mid: int, timeout: float = 15) -> dict:
        with self.cond:
            if not self.cond.wait_for(lambda: mid in self.replies or self.eof, timeout):
                raise DemoError(f"front {self.node_id}: no reply to msg_id {mid} in {timeout} s")
            if mid not in self.replies:
                raise DemoError(f"front {self.node_id} exited without answering msg_id {mid}")
            return self.replies[mid][1]

    def call(self, body: dict, timeout: float = 15) -> dict:
        return self.wait(self.send(body), timeout)

    def call_ok(self, body: dict, timeout: float = 15) -> dict:
        reply = self.call(body, timeout)
        if reply.get("type") != body["type"] + "_ok":
            raise DemoError(f"front {self.node_id}: {body['type']} answered {reply}")
        return reply

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            with open(self.stderr_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


# -- the network -------------------------------------------------------------------


class Network:
    """The four namespaces (three hosts and the switch), their addresses, and
    their deletion (which removes the bridge and every veth)."""

    def __init__(self, tag: str, hosts: dict[str, int] = HOSTS, subnet: str = SUBNET) -> None:
        self.tag = tag
        self.hosts = hosts  # host -> last octet (scripts/netns_cluster_demo.py has its own)
        self.subnet = subnet
        self.namespaces: list[str] = []  # created, to delete

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def addr(self, host: str) -> str:
        return f"{self.subnet}.{self.hosts[host]}"

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.addr('log')}:{PORT}"

    def build(self) -> None:
        sw = self.ns("sw")
        for host in ("sw", *self.hosts):
            ip("netns", "add", self.ns(host))
            self.namespaces.append(self.ns(host))
            ip("-n", self.ns(host), "link", "set", "lo", "up")
        ip("-n", sw, "link", "add", "br0", "type", "bridge")
        ip("-n", sw, "link", "set", "br0", "up")
        for host in self.hosts:
            # the pair is made in the switch; its far end moves into the host as eth0
            port = f"port-{host}"
            ip(
                "-n",
                sw,
                "link",
                "add",
                "name",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                self.ns(host),
            )
            ip("-n", sw, "link", "set", port, "master", "br0", "up")
            ip("-n", self.ns(host), "addr", "add", f"{self.addr(host)}/24", "dev", "eth0")
            ip("-n", self.ns(host), "link", "set", "eth0", "up")

    def delete(self) -> None:
        for name in reversed(self.namespaces):
            # anything still running inside (a child that outlived its parent), by pid
            pids = ip("netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ValueError, ProcessLookupError):
                    pass
            done = ip("netns", "del", name, check=False)
            if done.returncode != 0:
                print(f"could not delete namespace {name}: {done.stderr.strip()}", file=sys.stderr)
        self.namespaces = []

    def describe(self) -> None:
        say(
            f"  {self.ns('log'):<14} {self.addr('log'):<10} log host: node.py --roles "
            f"writer,compactor --listen {self.endpoint} (compactor on :{PORT + 1})"
        )
        for host, node_id in FRONTS.items():
            say(
                f"  {self.ns(host):<14} {self.addr(host):<10} front host: node.py --connect "
                f"{self.endpoint} --key-name {node_id}   (Maelstrom node {node_id})"
            )
        say(
            f"  {self.ns('sw'):<14} {'':<10} switch: bridge br0; ports port-log, port-a, port-b,"
            " each a veth pair with eth0 in its host"
        )


def make_keys(work: str, py: str) -> dict[str, str]:
    """One key directory per host, holding only what that host needs."""
    master = os.path.join(work, "keys")
    for node_id in FRONTS.values():
        run = subprocess.run(
            [py, "-m", "walctl", "keygen", master, "--client", node_id],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
        if run.returncode != 0:
            raise DemoError(f"walctl keygen failed ({run.returncode}): {run.stderr.strip()}")
    wanted = {"log": ["server.key", "server.key_secret", "clients"]}
    for node_id_host, node_id in FRONTS.items():
        wanted[node_id_host] = [f"{node_id}.key", f"{node_id}.key_secret", "server.key"]
    dirs = {}
    for host, names in wanted.items():
        d = os.path.join(work, host, "keys")
        os.makedirs(d, mode=0o700)
        for name in names:
            src = os.path.join(master, name)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(d, name))
            else:
                shutil.copy2(src, d)
        dirs[host] = d
    return dirs


# -- the log host ------------------------------------------------------------------


class LogSide:
    """The log host's `node.py --roles writer,compactor --listen ...`: its
    process, its stderr, its writer, its sockets."""

    def __init__(self, net: Network, work: str, py: str) -> None:
        self.net = net
        self.py = py
        self.data_dir = os.path.join(work, "log", "data")
        self.stderr_path = os.path.join(work, "log", "stderr.log")
        self.proc: subprocess.Popen | None = None

    def start(self, keys: str) -> None:
        argv = [
            "ip", "netns", "exec", self.net.ns("log"), self.py, os.path.join(REPO, "node.py"),
            "--roles", "writer,compactor", "--listen", self.net.endpoint,
            "--data-dir", self.data_dir, "--keys", keys,
        ]  # fmt: skip
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=REPO,
                preexec_fn=_die_with_demo,
                start_new_session=True,  # a Ctrl-C reaches the demo only: it stops them in order
            )

    def lines(self) -> list[str]:
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read().splitlines()
        except OSError:
            return []

    def tail(self, lines: int = 15) -> str:
        try:
            with open(self.stderr_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def writer_pid(self) -> int | None:
        return writer_pid(self.proc.pid)

    def listening(self, port: int = PORT) -> bool:
        return listening(self.proc.pid, self.net.addr("log"), port)

    def must_be_running(self) -> None:
        if self.proc.poll() is not None:
            raise DemoError(f"the log side exited with {self.proc.returncode}:\n{self.tail()}")

    def wait_listening(self, timeout: float = 20) -> float:
        deadline = now() + timeout
        while now() < deadline:
            self.must_be_running()
            if self.listening(PORT) and self.listening(PORT + 1):
                return now()
            time.sleep(0.005)
        raise DemoError(f"the log side did not listen on :{PORT}/:{PORT + 1} in {timeout} s")

    def stop(self, timeout: float = 20) -> int | str:
        """SIGTERM; its exit status, or why there is none."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return f"still running after {timeout:g} s"


def init_front(front: Front, timeout: float = 20) -> None:
    """init, asked again while the front answers 11 (its link to the writer is not up yet)."""
    t = now()
    deadline = t + timeout
    tries = 0
    while True:
        tries += 1
        init = {"type": "init", "node_id": front.node_id, "node_ids": NODE_IDS}
        reply = front.call(init, timeout=timeout)
        if reply.get("type") == "init_ok":
            break
        if reply.get("code") != Code.TEMPORARILY_UNAVAILABLE or now() > deadline:
            raise DemoError(f"front {front.node_id}: init answered {reply}")
        time.sleep(0.1)
    say(
        f"{front.node_id} init_ok (node_ids {NODE_IDS}) in {(now() - t) * 1000:.0f} ms, "
        f"{tries} {'try' if tries == 1 else 'tries'}",
        now(),
    )


# -- the load and the kill ---------------------------------------------------------


class Load:
    """Both fronts appending at --rate; the writer killed with SIGKILL once each
    has half its appends acknowledged; what happened after, in order."""

    def __init__(self, args: argparse.Namespace, fronts: list[Front], log_side: LogSide) -> None:
        self.args = args
        self.fronts = fronts
        self.log_side = log_side
        self.errors: list[str] = []
        self.drivers: list[threading.Thread] = []
        self.timeline: list[tuple[float, str]] = []  # (time, what happened)
        self.log_lines_before = 0  # the log side's stderr lines when the writer was killed

    def drive(self, front: Front, total: int, errors: list[str]) -> None:
        """`total` appends, paced at --rate, at most --window in flight."""
        try:
            interval = 1.0 / self.args.rate
            due = now()
            for i in range(total):
                with front.cond:
                    ok = front.cond.wait_for(
                        lambda: len(front.pending_appends) < self.args.window or front.eof, 30
                    )
                    if not ok or front.eof:
                        raise DemoError(f"front {front.node_id} stopped answering appends")
                delay = due - now()
                if delay > 0:
                    time.sleep(delay)
                due = max(due + interval, now() - interval)
                front.send({"type": "wal_append", "payload": f"set {front.node_id}-{i}={i}"})
            with front.cond:
                if not front.cond.wait_for(lambda: not front.pending_appends or front.eof, 30):
                    raise DemoError(f"front {front.node_id}: appends unanswered after 30 s")
        except DemoError as err:
            errors.append(str(err))

    def run(self, wpid: int) -> tuple[float, int | None]:
        """The whole load around one kill of writer `wpid`: (when it was killed, the new writer)."""
        a = self.args
        total = a.appends
        say(
            f"load: {len(self.fronts)} fronts x {total} appends, {a.rate:g}/s each, at most "
            f"{a.window} in flight per front",
            now(),
        )
        self.drivers = [
            threading.Thread(target=self.drive, args=(f, total, self.errors), daemon=True)
            for f in self.fronts
        ]
        t_load = now()
        for d in self.drivers:
            d.start()
        self.wait_for_acks(total // 2)
        t_kill = self.kill(wpid)
        new_wpid = self.watch_recovery(wpid, t_kill)
        for d in self.drivers:
            d.join(90)
        if self.errors:
            raise DemoError("; ".join(self.errors))
        t_done = now()
        for f in self.fronts:
            self.timeline += after_the_kill(f, t_kill)
        for t, text in sorted(self.timeline):
            say(f"  +{(t - t_kill) * 1000:5.0f} ms  {text}", t)
        say("log host stderr since the kill:")
        for line in self.log_side.lines()[self.log_lines_before :]:
            say(f"    {line}")
        say(f"load done in {(t_done - t_load):.2f} s", t_done)
        say()
        return t_kill, new_wpid

    def wait_for_acks(self, half: int) -> None:
        deadline = now() + 60
        while not all(f.acked >= half for f in self.fronts):
            if self.errors or now() > deadline:
                raise DemoError("; ".join(self.errors) or f"no {half} acks per front in 60 s")
            time.sleep(0.001)

    def kill(self, wpid: int) -> float:
        # kill while appends are in flight if we can catch some (an ack takes ~1 ms)
        catch = now() + 0.5
        while now() < catch and not any(f.pending_appends for f in self.fronts):
            time.sleep(0.0002)
        in_flight = {f.node_id: len(f.pending_appends) for f in self.fronts}
        self.log_lines_before = len(self.log_side.lines())
        os.kill(wpid, signal.SIGKILL)
        t_kill = now()
        acked_at_kill = {f.node_id: f.acked for f in self.fronts}
        say(
            f"acked so far {acked_at_kill}, in flight {in_flight}: kill -9 writer pid {wpid}",
            t_kill,
        )
        return t_kill

    def watch_recovery(self, wpid: int, t_kill: float) -> int | None:
        """Until a new writer runs and listens again (20 s at most): its pid, or None."""
        new_wpid, t_back = None, None
        while now() < t_kill + 20 and (new_wpid is None or t_back is None):
            if new_wpid is None:
                pid = self.log_side.writer_pid()
                if pid is not None and pid != wpid:
                    new_wpid = pid
                    self.timeline.append(
                        (now(), f"log host: the supervisor started a new writer, pid {pid}")
                    )
            elif self.log_side.listening(PORT):
                t_back = now()
                self.timeline.append(
                    (t_back, f"log host: the new writer has recovered and listens on :{PORT} again")
                )
            self.log_side.must_be_running()
            time.sleep(0.001)
        return new_wpid


def after_the_kill(f: Front, t_kill: float) -> list[tuple[float, str]]:
    """When front f first saw each outcome after the kill (an ack of an append
    sent after it, error 13, error 11), and how many of each."""
    firsts: dict[str, tuple[float, int]] = {}  # what -> (time, count)
    for mid, (t_rep, rep) in f.replies.items():
        if mid not in f.sent or f.sent[mid][1]["type"] != "wal_append" or t_rep < t_kill:
            continue
        if rep.get("type") == "error":
            what = f"error {rep.get('code')}"
        elif f.sent[mid][0] >= t_kill:
            what = "ok"
        else:
            continue
        t0, count = firsts.get(what, (t_rep, 0))
        firsts[what] = (min(t0, t_rep), count + 1)
    events = []
    for what, (t_first, count) in firsts.items():
        if what == "ok":
            text = f"the first append sent after the kill is acknowledged ({count} in all)"
        else:
            why = {
                "error 13": " (sent to the writer before the front saw it die: indefinite)",
                "error 11": " (waited --unavailable-wait for the writer: not sent)",
            }
            plural = "" if count == 1 else "s"
            text = f"{count} append{plural} answered {what}{why.get(what, '')}"
        events.append((t_first, f"{f.node_id}: {text}"))
    return events


# -- what each front saw -----------------------------------------------------------


@dataclass
class Tally:
    """One front's appends by outcome."""

    node_id: str
    sent: int = 0
    acks: list[tuple[int, int, str]] = field(default_factory=list)  # (msg_id, offset, payload)
    indefinite: list[str] = field(default_factory=list)  # payloads answered 13
    unavailable: list[str] = field(default_factory=list)  # payloads answered 11
    unexpected: list[str] = field(default_factory=list)
    before: int = 0  # acknowledged before the kill
    after: int = 0
    first_back: float | None = None  # the first ack of an append sent after the kill
    longest: float = 0.0  # the longest wait for a reply


def tally(f: Front, t_kill: float) -> Tally:
    t = Tally(f.node_id)
    sent = [(mid, ts, b) for mid, (ts, b) in sorted(f.sent.items()) if b["type"] == "wal_append"]
    t.sent = len(sent)
    for mid, t_sent, body in sent:
        t_rep, rep = f.replies.get(mid, (None, {"type": "missing"}))
        if t_rep is not None:
            t.longest = max(t.longest, t_rep - t_sent)
        if rep["type"] == "wal_append_ok":
            t.acks.append((mid, rep["offset"], body["payload"]))
            if t_rep < t_kill:
                t.before += 1
            else:
                t.after += 1
                if t_sent >= t_kill and (t.first_back is None or t_rep < t.first_back):
                    t.first_back = t_rep
        elif rep["type"] == "error" and rep.get("code") == Code.CRASH:
            t.indefinite.append(body["payload"])
        elif rep["type"] == "error" and rep.get("code") == Code.TEMPORARILY_UNAVAILABLE:
            t.unavailable.append(body["payload"])
        else:
            t.unexpected.append(f"{f.node_id} msg_id {mid}: {rep}")
    return t


def show_tallies(tallies: list[Tally], t_kill: float) -> None:
    say("what each front saw:")
    say(
        f"  {'node':<5}{'sent':>6}{'acked':>7}{'before':>8}{'after':>7}{'err 13':>8}"
        f"{'err 11':>8}{'other':>7}   back after   longest wait"
    )
    for t in tallies:
        back = f"{(t.first_back - t_kill) * 1000:7.0f} ms" if t.first_back else "      never"
        say(
            f"  {t.node_id:<5}{t.sent:>6}{len(t.acks):>7}{t.before:>8}{t.after:>7}"
            f"{len(t.indefinite):>8}{len(t.unavailable):>8}{len(t.unexpected):>7}"
            f"   {back}   {t.longest * 1000:7.0f} ms"
        )
    say(
        "  (before/after: acknowledged before/after the kill; back after: from the kill to "
        "the first ack of an append sent after it)"
    )


# -- the checks --------------------------------------------------------------------


class Checks:
    """Each check as it is made, printed, and the verdict over all of them."""

    def __init__(self) -> None:
        self.checks: list[tuple[bool, str]] = []

    def check(self, ok: bool, text: str) -> bool:
        self.checks.append((ok, text))
        say(f"  {'ok  ' if ok else 'FAIL'}  {text}")
        return ok

    def failed(self) -> list[str]:
        return [text for ok, text in self.checks if not ok]


def scan_all(front: Front) -> tuple[dict, list[dict]]:
    info = front.call_ok({"type": "wal_info"})
    entries: list[dict] = []
    nxt = info["first_offset"]
    while nxt < info["next_offset"]:
        rep = front.call_ok({"type": "wal_scan", "from_offset": nxt, "max_entries": 1000})
        if not rep["entries"]:
            break
        entries.extend(rep["entries"])
        nxt = rep["next_offset"]
    return info, entries


def check_replies(c: Checks, fronts: list[Front], tallies: list[Tally], restart: tuple) -> None:
    """The writer came back; every append got one reply; acks are unique and in order."""
    old, new = restart
    c.check(
        new is not None,
        f"the log-side supervisor restarted the writer (old pid {old}, new pid {new})",
    )
    unexpected = [u for t in tallies for u in t.unexpected]
    c.check(
        not unexpected and not any(f.duplicates for f in fronts),
        "every append got exactly one reply: wal_append_ok, error 13 or error 11"
        + (f" (unexpected: {unexpected[:3]})" if unexpected else ""),
    )
    for t in tallies:
        c.check(
            t.after > 0 and t.first_back,
            f"{t.node_id}: appends acknowledged again after the writer was killed",
        )
    all_offsets = [off for t in tallies for _, off, _ in t.acks]
    c.check(
        len(all_offsets) == len(set(all_offsets)),
        f"acknowledged offsets are unique across fronts ({len(all_offsets)} acks)",
    )
    for t in tallies:
        offs = [off for _, off, _ in t.acks]  # in the order the front was sent them
        c.check(
            all(x < y for x, y in zip(offs, offs[1:], strict=False)),
            f"{t.node_id}: its acknowledged offsets increase in the order it sent the appends",
        )


def check_log(c: Checks, fronts: list[Front], tallies: list[Tally]) -> None:
    """The log, scanned by both fronts: dense, the same, holding every ack and nothing else."""
    info, entries = scan_all(fronts[0])
    _, entries_b = scan_all(fronts[1])
    offsets = [e["offset"] for e in entries]
    n = info["next_offset"]
    c.check(
        info["first_offset"] == 0 and offsets == list(range(n)),
        f"the log's offsets are dense: 0..{n - 1}, {len(entries)} entries "
        f"(wal_info next_offset {n}, fsynced {info.get('fsynced')})",
    )
    c.check(
        entries == entries_b,
        f"{fronts[0].node_id} and {fronts[1].node_id} scan the same log, entry for entry",
    )
    by_offset = {e["offset"]: e["payload"] for e in entries}
    wrong = [
        (off, p, by_offset.get(off))
        for t in tallies
        for _, off, p in t.acks
        if by_offset.get(off) != p
    ]
    c.check(
        not wrong,
        "every acknowledged append is in the log at its offset "
        "with its payload" + (f" (wrong: {wrong[:3]})" if wrong else ""),
    )
    payloads = [e["payload"] for e in entries]
    sent_payloads = {
        b["payload"] for f in fronts for _, b in f.sent.values() if b["type"] == "wal_append"
    }
    strays = [p for p in payloads if p not in sent_payloads]
    dupes = len(payloads) - len(set(payloads))
    c.check(
        not strays and not dupes,
        f"nothing else is in the log: no duplicates ({dupes}), nothing never sent ({len(strays)})",
    )
    in_log = set(payloads)
    n11 = [p for t in tallies for p in t.unavailable]
    c.check(
        not any(p in in_log for p in n11),
        f"no append answered error 11 is in the log ({len(n11)} answered 11; 11 is definite)",
    )
    n13 = [p for t in tallies for p in t.indefinite]
    landed = sum(p in in_log for p in n13)
    say(
        f"        (error 13 is indefinite: of the {len(n13)} appends answered 13, {landed} "
        f"reached the log before the kill and {len(n13) - landed} did not)"
    )
    acked = sum(len(t.acks) for t in tallies)
    c.check(
        n == acked + landed,
        f"next_offset {n} = {acked} acknowledged + {landed} of the error-13 appends",
    )


def check_cross_reads(c: Checks, fronts: list[Front], tallies: list[Tally]) -> None:
    """Each front reads the other's newest entry (wal_read) and, within what it
    acked itself, the other's newest write below (kv_get)."""
    by_node = {t.node_id: t for t in tallies}
    for f, other in ((fronts[0], fronts[1]), (fronts[1], fronts[0])):
        mine = by_node[f.node_id].acks
        theirs = by_node[other.node_id].acks
        if not theirs or not mine:
            c.check(False, f"{f.node_id} reads {other.node_id}'s entries (no acks)")
            continue
        _, off, payload = theirs[-1]
        rep = f.call({"type": "wal_read", "offset": off})
        ok_read = rep.get("type") == "wal_read_ok" and rep.get("payload") == payload
        # kv_get's read-your-writes covers what this front acked: pick the
        # other's newest entry below this front's newest ack
        my_last = max(o for _, o, _ in mine)
        below = [(o, p) for _, o, p in theirs if o < my_last]
        kv_note = ""
        ok_kv = True
        if below:
            o, p = below[-1]
            key, value = p[len("set ") :].split("=", 1)
            kv = f.call({"type": "kv_get", "key": key})
            ok_kv = kv.get("type") == "kv_get_ok" and kv.get("value") == value
            kv_note = f", kv_get {key} -> {kv.get('value', kv)!r}"
        c.check(
            ok_read and ok_kv,
            f"{f.node_id} reads {other.node_id}'s entries: "
            f"wal_read {off} -> {rep.get('payload', rep)!r}{kv_note}",
        )


def check_stop(c: Checks, fronts: list[Front], log_side: LogSide, py: str) -> None:
    """Stop: end of input for the fronts, SIGTERM for the log side; then walctl verify."""
    for f in fronts:
        f.proc.stdin.close()
    codes = {}
    for f in fronts:
        try:
            codes[f.node_id] = f.proc.wait(20)
        except subprocess.TimeoutExpired:
            codes[f.node_id] = "still running after 20 s"
    c.check(all(rc == 0 for rc in codes.values()), f"fronts exit 0 at end of input ({codes})")
    code = log_side.stop(20)
    c.check(code == 0, f"log side exits 0 on SIGTERM ({code})")
    verify = subprocess.run(
        [py, "-m", "walctl", "verify", log_side.data_dir],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    c.check(
        verify.returncode == 0,
        "walctl verify on the log host's data directory: "
        + (verify.stdout.strip().splitlines() or ["(no output)"])[-1],
    )


def show_status(front: Front) -> None:
    st = front.call({"type": "status"})
    if st.get("type") == "status_ok":
        procs = ", ".join(f"{p['role']} {p['pid']}" for p in st.get("processes", []))
        say(f"        ({front.node_id} status: {procs})")


# -- the demo ----------------------------------------------------------------------


class Demo:
    """The run from network to verdict, and the cleanup after it in every case."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.net = Network(f"wn{os.getpid()}")
        self.work = tempfile.mkdtemp(prefix="walnode-netns-")
        self.py = python()
        self.log_side = LogSide(self.net, self.work, self.py)
        self.fronts: dict[str, Front] = {}
        self.checks = Checks()

    def start_front(self, host: str, keys: str) -> None:
        node_id = FRONTS[host]
        argv = [
            "ip", "netns", "exec", self.net.ns(host), self.py, os.path.join(REPO, "node.py"),
            "--connect", self.net.endpoint, "--keys", keys, "--key-name", node_id,
        ]  # fmt: skip
        self.fronts[host] = Front(host, node_id, argv, os.path.join(self.work, host, "stderr.log"))

    def run(self) -> int:
        say(f"walnode across hosts: network namespaces on one machine (work dir {self.work})")
        self.net.describe()
        say()
        t = now()
        self.net.build()
        say(f"network up: 4 namespaces, bridge, 3 veth pairs ({(now() - t) * 1000:.0f} ms)", now())
        keys = make_keys(self.work, self.py)
        say("CURVE keys (walctl keygen --client n1, --client n2), copied per host:", now())
        for host, d in keys.items():
            files = sorted(os.path.join(r, f)[len(d) + 1 :] for r, _, fs in os.walk(d) for f in fs)
            say(f"    {host:<3}: {', '.join(files)}")
        wpid = self.start_processes(keys)
        for front in self.fronts.values():
            init_front(front)
        fronts = list(self.fronts.values())
        t_kill, new_wpid = Load(self.args, fronts, self.log_side).run(wpid)
        return self.report(t_kill, (wpid, new_wpid))

    def start_processes(self, keys: dict[str, str]) -> int:
        """The log side and both fronts; the log side's writer pid once it listens."""
        t_start = now()
        self.log_side.start(keys["log"])
        for host in FRONTS:
            self.start_front(host, keys[host])
        t_listen = self.log_side.wait_listening()
        wpid = self.log_side.writer_pid()
        say(
            f"log host listening on :{PORT} and :{PORT + 1} after {(t_listen - t_start) * 1000:.0f}"
            f" ms (supervisor pid {self.log_side.proc.pid}, writer pid {wpid})",
            t_listen,
        )
        if wpid is None:
            raise DemoError("no writer process under the log-side supervisor")
        return wpid

    def report(self, t_kill: float, restart: tuple[int, int | None]) -> int:
        fronts = list(self.fronts.values())
        tallies = [tally(f, t_kill) for f in fronts]
        show_tallies(tallies, t_kill)
        say()
        say("checks:")
        check_replies(self.checks, fronts, tallies, restart)
        check_log(self.checks, fronts, tallies)
        check_cross_reads(self.checks, fronts, tallies)
        show_status(fronts[0])
        check_stop(self.checks, fronts, self.log_side, self.py)
        failed = self.checks.failed()
        say()
        if failed:
            say(f"RESULT: FAIL ({len(failed)} of {len(self.checks.checks)} checks failed)")
            self.show_logs()
            return EXIT_FAIL
        say(f"RESULT: PASS ({len(self.checks.checks)} checks)")
        return 0

    def show_logs(self) -> None:
        say(f"--- log host stderr (tail) ---\n{self.log_side.tail()}")
        for f in self.fronts.values():
            say(f"--- front {f.node_id} stderr (tail) ---\n{f.stderr_tail()}")

    # -- cleanup ---------------------------------------------------------------

    def cleanup(self) -> None:
        """Stop every process by pid, delete the namespaces (which removes the
        bridge and every veth), remove the work directory unless --keep."""
        for f in self.fronts.values():
            try:
                if f.proc.stdin and not f.proc.stdin.closed:
                    f.proc.stdin.close()
            except OSError:
                pass
        procs = [f.proc for f in self.fronts.values()]
        if self.log_side.proc is not None:
            procs.append(self.log_side.proc)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for f in self.fronts.values():
            f.client.kill()  # reaped above; this joins its reader threads
        self.net.delete()
        if self.args.keep:
            say(f"kept: {self.work} (keys, log/data, each host's stderr.log)")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--appends", type=int, default=400, help="appends per front (400)")
    p.add_argument("--rate", type=float, default=200, help="appends per second per front (200)")
    p.add_argument("--window", type=int, default=8, help="appends in flight per front, at most")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (keys, data directory, each host's stderr)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="only say whether this machine can run the demo (exit 0) or why not (exit 2)",
    )
    args = p.parse_args(argv)
    if args.appends < 10 or args.rate <= 0 or args.window < 1:
        p.error("--appends must be at least 10, --rate and --window positive")

    reason = probe()
    if args.check:
        print(reason or "ok: network namespaces, veth pairs and bridges work here")
        return EXIT_UNSUPPORTED if reason else 0
    if reason:
        print(f"cannot run the demo here: {reason}", file=sys.stderr)
        return EXIT_UNSUPPORTED

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    demo = Demo(args)
    code = EXIT_FAIL
    try:
        code = demo.run()
    except DemoError as err:
        say(f"\nRESULT: FAIL: {err}")
        demo.show_logs()
    except KeyboardInterrupt:
        say("\ninterrupted; cleaning up")
        code = 130
    finally:
        # no second Ctrl-C or SIGTERM in the middle of the cleanup
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo.cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
