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

from actors.codes import Code
from walnode import Client, procfs

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


# -- the demo --------------------------------------------------------------------


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = f"wn{os.getpid()}"
        self.namespaces: list[str] = []  # created, to delete
        self.work = tempfile.mkdtemp(prefix="walnode-netns-")
        self.py = python()
        self.log_proc: subprocess.Popen | None = None
        self.fronts: dict[str, Front] = {}
        self.checks: list[tuple[bool, str]] = []
        self.results: dict[str, dict] = {}

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def addr(self, host: str) -> str:
        return f"{SUBNET}.{HOSTS[host]}"

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.addr('log')}:{PORT}"

    # -- topology ------------------------------------------------------------

    def build_network(self) -> None:
        sw = self.ns("sw")
        for host in ("sw", *HOSTS):
            ip("netns", "add", self.ns(host))
            self.namespaces.append(self.ns(host))
            ip("-n", self.ns(host), "link", "set", "lo", "up")
        ip("-n", sw, "link", "add", "br0", "type", "bridge")
        ip("-n", sw, "link", "set", "br0", "up")
        for host in HOSTS:
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

    def make_keys(self) -> dict[str, str]:
        """One key directory per host, holding only what that host needs."""
        master = os.path.join(self.work, "keys")
        for node_id in FRONTS.values():
            run = subprocess.run(
                [self.py, "-m", "walctl", "keygen", master, "--client", node_id],
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
            d = os.path.join(self.work, host, "keys")
            os.makedirs(d, mode=0o700)
            for name in names:
                src = os.path.join(master, name)
                if os.path.isdir(src):
                    shutil.copytree(src, os.path.join(d, name))
                else:
                    shutil.copy2(src, d)
            dirs[host] = d
        return dirs

    # -- processes -----------------------------------------------------------

    def start_log_side(self, keys: str) -> None:
        data = os.path.join(self.work, "log", "data")
        self.data_dir = data
        self.log_stderr = os.path.join(self.work, "log", "stderr.log")
        argv = [
            "ip", "netns", "exec", self.ns("log"), self.py, os.path.join(REPO, "node.py"),
            "--roles", "writer,compactor", "--listen", self.endpoint,
            "--data-dir", data, "--keys", keys,
        ]  # fmt: skip
        with open(self.log_stderr, "wb") as err:
            self.log_proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=REPO,
                preexec_fn=_die_with_demo,
                start_new_session=True,  # a Ctrl-C reaches the demo only: it stops them in order
            )

    def start_front(self, host: str, keys: str) -> None:
        node_id = FRONTS[host]
        argv = [
            "ip", "netns", "exec", self.ns(host), self.py, os.path.join(REPO, "node.py"),
            "--connect", self.endpoint, "--keys", keys, "--key-name", node_id,
        ]  # fmt: skip
        self.fronts[host] = Front(host, node_id, argv, os.path.join(self.work, host, "stderr.log"))

    def log_lines(self) -> list[str]:
        try:
            with open(self.log_stderr, errors="replace") as f:
                return f.read().splitlines()
        except (OSError, AttributeError):
            return []

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_stderr, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except (OSError, AttributeError):
            return ""

    def wait_listening(self, timeout: float = 20) -> float:
        pid, host = self.log_proc.pid, self.addr("log")
        deadline = now() + timeout
        while now() < deadline:
            if self.log_proc.poll() is not None:
                raise DemoError(
                    f"the log side exited with {self.log_proc.returncode}:\n{self.log_tail()}"
                )
            if listening(pid, host, PORT) and listening(pid, host, PORT + 1):
                return now()
            time.sleep(0.005)
        raise DemoError(f"the log side did not listen on :{PORT}/:{PORT + 1} in {timeout} s")

    # -- load ----------------------------------------------------------------

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

    # -- checks --------------------------------------------------------------

    def check(self, ok: bool, text: str) -> bool:
        self.checks.append((ok, text))
        say(f"  {'ok  ' if ok else 'FAIL'}  {text}")
        return ok

    def scan_all(self, front: Front) -> tuple[dict, list[dict]]:
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

    # -- the run -------------------------------------------------------------

    def run(self) -> int:
        a = self.args
        say(f"walnode across hosts: network namespaces on one machine (work dir {self.work})")
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
        say()
        t = now()
        self.build_network()
        say(f"network up: 4 namespaces, bridge, 3 veth pairs ({(now() - t) * 1000:.0f} ms)", now())
        keys = self.make_keys()
        say("CURVE keys (walctl keygen --client n1, --client n2), copied per host:", now())
        for host, d in keys.items():
            files = sorted(os.path.join(r, f)[len(d) + 1 :] for r, _, fs in os.walk(d) for f in fs)
            say(f"    {host:<3}: {', '.join(files)}")

        t_start = now()
        self.start_log_side(keys["log"])
        for host in FRONTS:
            self.start_front(host, keys[host])
        t_listen = self.wait_listening()
        wpid = writer_pid(self.log_proc.pid)
        say(
            f"log host listening on :{PORT} and :{PORT + 1} after {(t_listen - t_start) * 1000:.0f}"
            f" ms (supervisor pid {self.log_proc.pid}, writer pid {wpid})",
            t_listen,
        )
        if wpid is None:
            raise DemoError("no writer process under the log-side supervisor")

        for front in self.fronts.values():
            t = now()
            deadline = t + 20
            tries = 0
            while True:
                tries += 1
                init = {"type": "init", "node_id": front.node_id, "node_ids": NODE_IDS}
                reply = front.call(init, timeout=20)
                if reply.get("type") == "init_ok":
                    break
                if reply.get("code") != 11 or now() > deadline:
                    raise DemoError(f"front {front.node_id}: init answered {reply}")
                time.sleep(0.1)
            say(
                f"{front.node_id} init_ok (node_ids {NODE_IDS}) in {(now() - t) * 1000:.0f} ms, "
                f"{tries} {'try' if tries == 1 else 'tries'}",
                now(),
            )

        total = a.appends
        say(
            f"load: {len(self.fronts)} fronts x {total} appends, {a.rate:g}/s each, at most "
            f"{a.window} in flight per front",
            now(),
        )
        errors: list[str] = []
        drivers = [
            threading.Thread(target=self.drive, args=(f, total, errors), daemon=True)
            for f in self.fronts.values()
        ]
        t_load = now()
        for d in drivers:
            d.start()
        half = total // 2
        deadline = now() + 60
        while not all(f.acked >= half for f in self.fronts.values()):
            if errors or now() > deadline:
                raise DemoError("; ".join(errors) or f"no {half} acks per front in 60 s")
            time.sleep(0.001)
        # kill while appends are in flight if we can catch some (an ack takes ~1 ms)
        catch = now() + 0.5
        while now() < catch and not any(f.pending_appends for f in self.fronts.values()):
            time.sleep(0.0002)
        in_flight = {f.node_id: len(f.pending_appends) for f in self.fronts.values()}
        log_lines_before = len(self.log_lines())
        os.kill(wpid, signal.SIGKILL)
        t_kill = now()
        acked_at_kill = {f.node_id: f.acked for f in self.fronts.values()}
        say(
            f"acked so far {acked_at_kill}, in flight {in_flight}: kill -9 writer pid {wpid}",
            t_kill,
        )

        # what happens next, collected and then told in the order it happened
        timeline: list[tuple[float, str]] = []
        new_wpid, t_back = None, None
        while now() < t_kill + 20 and (new_wpid is None or t_back is None):
            if new_wpid is None:
                pid = writer_pid(self.log_proc.pid)
                if pid is not None and pid != wpid:
                    new_wpid = pid
                    timeline.append(
                        (now(), f"log host: the supervisor started a new writer, pid {pid}")
                    )
            elif listening(self.log_proc.pid, self.addr("log"), PORT):
                t_back = now()
                timeline.append(
                    (t_back, f"log host: the new writer has recovered and listens on :{PORT} again")
                )
            if self.log_proc.poll() is not None:
                raise DemoError(
                    f"the log side exited with {self.log_proc.returncode}:\n{self.log_tail()}"
                )
            time.sleep(0.001)

        for d in drivers:
            d.join(90)
        if errors:
            raise DemoError("; ".join(errors))
        t_done = now()
        for f in self.fronts.values():
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
                timeline.append((t_first, f"{f.node_id}: {text}"))
        for t, text in sorted(timeline):
            say(f"  +{(t - t_kill) * 1000:5.0f} ms  {text}", t)
        say("log host stderr since the kill:")
        for line in self.log_lines()[log_lines_before:]:
            say(f"    {line}")
        say(f"load done in {(t_done - t_load):.2f} s", t_done)
        say()
        self.restart = (wpid, new_wpid)
        return self.report(t_kill)

    def report(self, t_kill: float) -> int:
        fronts = list(self.fronts.values())
        acks: dict[str, list[tuple[int, int, str]]] = {}  # node -> [(msg_id, offset, payload)]
        indefinite: dict[str, list[str]] = {}  # node -> payloads answered 13
        unavailable: dict[str, list[str]] = {}  # node -> payloads answered 11
        unexpected: list[str] = []
        say("what each front saw:")
        say(
            f"  {'node':<5}{'sent':>6}{'acked':>7}{'before':>8}{'after':>7}{'err 13':>8}"
            f"{'err 11':>8}{'other':>7}   back after   longest wait"
        )
        for f in fronts:
            acks[f.node_id], indefinite[f.node_id], unavailable[f.node_id] = [], [], []
            before = after = other = 0
            first_back = None
            longest = 0.0
            sent = [
                (mid, t, b) for mid, (t, b) in sorted(f.sent.items()) if b["type"] == "wal_append"
            ]
            for mid, t_sent, body in sent:
                t_rep, rep = f.replies.get(mid, (None, {"type": "missing"}))
                if t_rep is not None:
                    longest = max(longest, t_rep - t_sent)
                if rep["type"] == "wal_append_ok":
                    acks[f.node_id].append((mid, rep["offset"], body["payload"]))
                    if t_rep < t_kill:
                        before += 1
                    else:
                        after += 1
                        if t_sent >= t_kill and (first_back is None or t_rep < first_back):
                            first_back = t_rep
                elif rep["type"] == "error" and rep.get("code") == Code.CRASH:
                    indefinite[f.node_id].append(body["payload"])
                elif rep["type"] == "error" and rep.get("code") == Code.TEMPORARILY_UNAVAILABLE:
                    unavailable[f.node_id].append(body["payload"])
                else:
                    other += 1
                    unexpected.append(f"{f.node_id} msg_id {mid}: {rep}")
            back = f"{(first_back - t_kill) * 1000:7.0f} ms" if first_back else "      never"
            self.results[f.node_id] = {"after": after, "back": first_back}
            say(
                f"  {f.node_id:<5}{len(sent):>6}{len(acks[f.node_id]):>7}{before:>8}{after:>7}"
                f"{len(indefinite[f.node_id]):>8}{len(unavailable[f.node_id]):>8}{other:>7}"
                f"   {back}   {longest * 1000:7.0f} ms"
            )
        say(
            "  (before/after: acknowledged before/after the kill; back after: from the kill to "
            "the first ack of an append sent after it)"
        )
        say()
        say("checks:")
        old, new = self.restart
        self.check(
            new is not None,
            f"the log-side supervisor restarted the writer (old pid {old}, new pid {new})",
        )
        self.check(
            not unexpected and not any(f.duplicates for f in fronts),
            "every append got exactly one reply: wal_append_ok, error 13 or error 11"
            + (f" (unexpected: {unexpected[:3]})" if unexpected else ""),
        )
        for f in fronts:
            self.check(
                self.results[f.node_id]["after"] > 0 and self.results[f.node_id]["back"],
                f"{f.node_id}: appends acknowledged again after the writer was killed",
            )
        all_offsets = [off for lst in acks.values() for _, off, _ in lst]
        self.check(
            len(all_offsets) == len(set(all_offsets)),
            f"acknowledged offsets are unique across fronts ({len(all_offsets)} acks)",
        )
        for node, lst in acks.items():
            offs = [off for _, off, _ in lst]  # in the order the front was sent them
            self.check(
                all(x < y for x, y in zip(offs, offs[1:], strict=False)),
                f"{node}: its acknowledged offsets increase in the order it sent the appends",
            )

        info, entries = self.scan_all(fronts[0])
        _, entries_b = self.scan_all(fronts[1])
        offsets = [e["offset"] for e in entries]
        n = info["next_offset"]
        self.check(
            info["first_offset"] == 0 and offsets == list(range(n)),
            f"the log's offsets are dense: 0..{n - 1}, {len(entries)} entries "
            f"(wal_info next_offset {n}, fsynced {info.get('fsynced')})",
        )
        self.check(
            entries == entries_b,
            f"{fronts[0].node_id} and {fronts[1].node_id} scan the same log, entry for entry",
        )
        by_offset = {e["offset"]: e["payload"] for e in entries}
        wrong = [
            (off, p, by_offset.get(off))
            for lst in acks.values()
            for _, off, p in lst
            if by_offset.get(off) != p
        ]
        self.check(
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
        self.check(
            not strays and not dupes,
            f"nothing else is in the log: no duplicates "
            f"({dupes}), nothing never sent ({len(strays)})",
        )
        in_log = set(payloads)
        n11 = [p for lst in unavailable.values() for p in lst]
        self.check(
            not any(p in in_log for p in n11),
            f"no append answered error 11 is in the log ({len(n11)} answered 11; 11 is definite)",
        )
        n13 = [p for lst in indefinite.values() for p in lst]
        landed = sum(p in in_log for p in n13)
        say(
            f"        (error 13 is indefinite: of the {len(n13)} appends answered 13, {landed} "
            f"reached the log before the kill and {len(n13) - landed} did not)"
        )
        self.check(
            n == len(all_offsets) + landed,
            f"next_offset {n} = {len(all_offsets)} acknowledged + {landed} of the error-13 appends",
        )

        for f, other in ((fronts[0], fronts[1]), (fronts[1], fronts[0])):
            mine = acks[f.node_id]
            theirs = acks[other.node_id]
            if not theirs or not mine:
                self.check(False, f"{f.node_id} reads {other.node_id}'s entries (no acks)")
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
            self.check(
                ok_read and ok_kv,
                f"{f.node_id} reads {other.node_id}'s entries: "
                f"wal_read {off} -> {rep.get('payload', rep)!r}{kv_note}",
            )

        st = fronts[0].call({"type": "status"})
        if st.get("type") == "status_ok":
            procs = ", ".join(f"{p['role']} {p['pid']}" for p in st.get("processes", []))
            say(f"        ({fronts[0].node_id} status: {procs})")

        # stop: end of input for the fronts, SIGTERM for the log side
        for f in fronts:
            f.proc.stdin.close()
        codes = {}
        for f in fronts:
            try:
                codes[f.node_id] = f.proc.wait(20)
            except subprocess.TimeoutExpired:
                codes[f.node_id] = "still running after 20 s"
        self.check(all(c == 0 for c in codes.values()), f"fronts exit 0 at end of input ({codes})")
        self.log_proc.send_signal(signal.SIGTERM)
        try:
            code = self.log_proc.wait(20)
        except subprocess.TimeoutExpired:
            code = "still running after 20 s"
        self.check(code == 0, f"log side exits 0 on SIGTERM ({code})")
        verify = subprocess.run(
            [self.py, "-m", "walctl", "verify", self.data_dir],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        self.check(
            verify.returncode == 0,
            "walctl verify on the log host's data directory: "
            + (verify.stdout.strip().splitlines() or ["(no output)"])[-1],
        )

        failed = [text for ok, text in self.checks if not ok]
        say()
        if failed:
            say(f"RESULT: FAIL ({len(failed)} of {len(self.checks)} checks failed)")
            self.show_logs()
            return EXIT_FAIL
        say(f"RESULT: PASS ({len(self.checks)} checks)")
        return 0

    def show_logs(self) -> None:
        say(f"--- log host stderr (tail) ---\n{self.log_tail()}")
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
        if self.log_proc is not None:
            procs.append(self.log_proc)
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
