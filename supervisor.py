"""The supervisor: starts walnode's processes, watches them, restarts them.

It knows roles and lifecycles, not log internals. Start order: the writer
first (it takes the directory and recovers), then the compactor (it
replays up to the writer's durable offset), then the front, each once the
one before is ready. A process that dies is restarted with backoff; too many restarts in
a short window stop everything with a message naming the process. A
restarted writer serves only after its recovery, and the front is told when
the writer goes down and comes back. The children ask the kernel to kill
them when the supervisor dies, so even a SIGKILL leaves no orphans.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field

import zmq

from actors import messages as m
from actors import sockets
from actors.codes import Exit
from actors.runtime import setup_logging
from wal import DataDir, DirectoryLocked, WalError

log = setup_logging("supervisor")

# exit codes that restarting cannot fix, and what each means for the node
FATAL_EXITS = {
    "writer": {
        Exit.CORRUPT: "the log is corrupt",
        Exit.LOCKED: "the data directory is locked",
        Exit.CANNOT_LISTEN: "it cannot listen on --listen's address",
    },
    "compactor": {
        Exit.CORRUPT: "no snapshot and log from which to rebuild the state",
        Exit.CANNOT_LISTEN: "it cannot listen on --listen's port + 1",
    },
}
# who is told when a role goes down or comes back
DEPENDENTS = {"writer": ("front", "compactor"), "compactor": ("front",), "front": ()}

# Children run as `python -m actors.<role>`: make the package importable
# whether walnode is installed or run from a checkout.
_HERE = os.path.dirname(os.path.abspath(__file__))
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [_HERE, os.environ.get("PYTHONPATH")])),
}

RESTART_BACKOFF_MIN = 0.02  # the second restart in a row waits this long (the first: none)
RESTART_BACKOFF_MAX = 1.0
RESTART_INTENSITY = 10  # default --max-restarts of one role ...
RESTART_WINDOW = 10.0  # ... within --restart-window seconds: stop everything


@dataclass
class Child:
    role: str
    argv: list[str]
    pass_fds: tuple[int, ...] = ()
    inherit_stdio: bool = False
    proc: subprocess.Popen | None = None
    restarts: int = 0
    state: str = "stopped"  # starting, ready, down, stopped
    restart_times: deque = field(default_factory=deque)
    restart_at: float | None = None
    backoff: float = 0.0  # before the next restart
    last_exit: str | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        stdio = {} if self.inherit_stdio else {"stdin": subprocess.DEVNULL, "stdout": sys.stderr}
        self.proc = subprocess.Popen(self.argv, pass_fds=self.pass_fds, env=CHILD_ENV, **stdio)
        self.state = "starting"
        self.restart_at = None
        log.info("started %s pid %d", self.role, self.proc.pid)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    def __init__(
        self, args: argparse.Namespace, data_dir: str | None, run_dir: str, lock_fd: int | None
    ) -> None:
        self.run_dir = run_dir
        self.max_restarts, self.restart_window = args.max_restarts, args.restart_window
        self.ctx = zmq.Context()
        self.control = sockets.bind_router(
            self.ctx, sockets.supervisor_endpoint(run_dir), handover=True
        )
        py = sys.executable
        common = ["--run-dir", run_dir, "--parent-pid", str(os.getpid())]
        listen = args.remote.argv("--listen") if args.listen else []
        writer_argv = [py, "-m", "actors.writer", *common, *listen]
        writer_argv += ["--data-dir", data_dir, "--fsync", args.fsync, "--lock-fd", str(lock_fd)]
        if args.max_segment_bytes is not None:
            writer_argv += ["--max-segment-bytes", str(args.max_segment_bytes)]
        compactor_argv = [py, "-m", "actors.compactor", *common, *listen, "--data-dir", data_dir]
        compactor_argv += [
            "--snapshot-every",
            str(args.snapshot_every),
            "--snapshot-every-bytes",
            str(args.snapshot_every_bytes),
            "--keep-entries",
            str(args.keep_entries),
            "--keep-snapshots",
            str(args.keep_snapshots),
        ]
        if args.no_auto_compact:
            compactor_argv.append("--no-auto-compact")
        connect = args.remote.argv("--connect") if args.connect else []
        front_argv = [py, "-m", "actors.front", *common, *connect]
        front_argv += [
            "--max-payload-bytes",
            str(args.max_payload_bytes),
            "--request-timeout",
            str(args.request_timeout),
            "--unavailable-wait",
            str(args.unavailable_wait),
        ]
        every = {
            "writer": Child("writer", writer_argv, pass_fds=(lock_fd,) if lock_fd else ()),
            "compactor": Child("compactor", compactor_argv),
            "front": Child("front", front_argv, inherit_stdio=True),
        }
        self.start_order = [role for role in every if role in args.roles]
        self.children = {role: every[role] for role in self.start_order}
        self.last_recovery: dict | None = None
        self.recoveries: dict[str, dict] = {}  # each role's latest
        self.stopping = False
        self.exit_code = 0

    # -- status ------------------------------------------------------------

    def status(self) -> dict:
        procs = [{"role": "supervisor", "pid": os.getpid(), "restarts": 0, "state": "ready"}]
        for role in self.start_order:
            c = self.children[role]
            procs.append({"role": role, "pid": c.pid, "restarts": c.restarts, "state": c.state})
        return {
            "processes": procs,
            "last_recovery": self.last_recovery,
            "recoveries": self.recoveries,
        }

    # -- messages from children ----------------------------------------------

    def on_message(self, ident: bytes, msg: list) -> None:
        kind = msg[0]
        if kind == m.READY:
            role, pid, recovery = msg[1], msg[2], msg[3]
            child = self.children.get(role)
            if child is None or child.pid != pid:
                return  # a message from a process that is already gone
            child.state = "ready"
            child.backoff = 0.0  # it recovered: the next crash is restarted at once
            if recovery is not None:
                self.last_recovery = {"role": role, **recovery}
                self.recoveries[role] = self.last_recovery
            for other in DEPENDENTS[role]:
                self.tell(other, [m.PEER, role, "ready"])
            if role == "front":  # a (re)started front learns who is up (if they are here)
                for peer in ("writer", "compactor"):
                    if peer in self.children:
                        state = "ready" if self.children[peer].state == "ready" else "down"
                        self.tell("front", [m.PEER, peer, state])
            following = self.start_order[self.start_order.index(role) + 1 :]
            if following and self.children[following[0]].proc is None:
                nxt = self.children[following[0]]
                if nxt.restart_at is None:
                    nxt.start()
        elif kind == m.STATUS:
            self.control.send_multipart([ident, m.pack([m.STATUS, msg[1], self.status()])])

    def tell(self, role: str, msg: list) -> None:
        if role in self.children and self.children[role].state in ("starting", "ready"):
            try:
                self.control.send_multipart([role.encode(), m.pack(msg)], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # not connected yet: it learns the state when it says ready

    # -- lifecycles ----------------------------------------------------------

    def on_exit(self, child: Child, code: int) -> None:
        child.last_exit = describe_exit(code)
        child.state = "down"
        proc, child.proc = child.proc, None
        if child.role == "front" and code == 0:
            log.info("front finished (stdin closed, every reply written); stopping")
            self.stopping = True
            return
        if self.stopping:
            return
        log.error("%s (pid %d) %s", child.role, proc.pid, child.last_exit)
        for other in DEPENDENTS[child.role]:
            self.tell(other, [m.PEER, child.role, "down"])
        fatal = FATAL_EXITS.get(child.role, {}).get(code)
        if fatal:
            self.fail(f"the {child.role} cannot start: {fatal} (see the message above)")
            return
        now = time.monotonic()
        child.restart_times.append(now)
        window = self.restart_window
        while child.restart_times and child.restart_times[0] < now - window:
            child.restart_times.popleft()
        if len(child.restart_times) > self.max_restarts:
            self.fail(
                f"{child.role} died {len(child.restart_times)} times within "
                f"{window:g} s (last: {child.last_exit}); giving up"
            )
            return
        child.restart_at = now + child.backoff
        child.backoff = min(max(child.backoff * 2, RESTART_BACKOFF_MIN), RESTART_BACKOFF_MAX)

    def fail(self, why: str) -> None:
        log.critical("%s", why)
        self.exit_code = 1
        self.stopping = True

    def run(self) -> int:
        # SIGCHLD wakes the loop at once: a dead writer's successor starts
        # without waiting out a poll interval.
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w)
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)
        self.children[self.start_order[0]].start()
        while True:
            for child in self.children.values():
                if child.proc is not None:
                    code = child.proc.poll()
                    if code is not None:
                        self.on_exit(child, code)
                elif child.restart_at is not None and time.monotonic() >= child.restart_at:
                    child.restarts += 1
                    child.start()
            if self.stopping:
                signal.set_wakeup_fd(-1)
                return self.shutdown()
            due = [c.restart_at for c in self.children.values() if c.restart_at is not None]
            wait = 1.0 if not due else max(0.0, min(due) - time.monotonic())
            events = dict(poller.poll(wait * 1000))
            if wake_r in events:
                os.read(wake_r, 4096)
            if self.control in events:
                for ident, data in sockets.drain(self.control, multipart=True):
                    self.on_message(ident, m.unpack(data))

    def shutdown(self) -> int:
        """Stop the front, the compactor, then the writer (which syncs and exits)."""
        for role in reversed(self.start_order):
            child = self.children[role]
            if child.proc is None:
                continue
            if role == "front":
                child.proc.terminate()
            else:
                self.control.send_multipart([role.encode(), m.pack([m.STOP])])
            try:
                child.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.error("%s did not stop in 5 s; killing pid %d", role, child.proc.pid)
                child.proc.kill()
                child.proc.wait()
        self.control.close()
        self.ctx.term()
        return self.exit_code


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        help="keep the log here across runs (default: a fresh directory per run, named on stderr)",
    )
    p.add_argument(
        "--fsync",
        default="always",
        help="always (default: ack after fsync, group commit), interval:MSms, or never",
    )
    p.add_argument(
        "--max-segment-bytes",
        type=int,
        default=None,
        help="roll segments at this size (default 64 MiB, or the directory's saved setting)",
    )
    p.add_argument(
        "--max-payload-bytes", type=int, default=1 << 20, help="largest payload accepted (1 MiB)"
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the writer before answering error 0 (timeout)",
    )
    p.add_argument(
        "--snapshot-every",
        type=int,
        default=100_000,
        help="take a snapshot automatically every N entries (100000, etcd's default)",
    )
    p.add_argument(
        "--snapshot-every-bytes",
        type=int,
        default=64 << 20,
        help="... or every B bytes of appended records (64 MiB), whichever comes first",
    )
    p.add_argument(
        "--keep-entries",
        type=int,
        default=5_000,
        help="after an automatic snapshot, compact keeping this many entries behind it (5000)",
    )
    p.add_argument(
        "--keep-snapshots", type=int, default=3, help="snapshot files kept; older ones pruned (3)"
    )
    p.add_argument(
        "--no-auto-compact", action="store_true", help="no automatic snapshots or compaction"
    )
    p.add_argument(
        "--unavailable-wait",
        type=float,
        default=2.0,
        help="seconds a request waits for a restarting writer before error 11",
    )
    p.add_argument(
        "--roles",
        default=None,
        help="the processes this host runs: writer,compactor,front (default), writer,compactor "
        "(the log side, with --listen) or front (with --connect)",
    )
    p.add_argument(
        "--listen",
        metavar="tcp://HOST:PORT",
        help="log side: serve remote fronts here (writer at PORT, compactor at PORT+1)",
    )
    p.add_argument(
        "--connect",
        metavar="tcp://HOST:PORT",
        help="a front only: reach the log side's --listen endpoint (implies --roles front)",
    )
    p.add_argument("--keys", metavar="KEYDIR", help="CURVE keys for tcp (walctl keygen KEYDIR)")
    p.add_argument("--key-name", default="client", help="this front's key pair in KEYDIR (client)")
    p.add_argument(
        "--insecure", action="store_true", help="plain tcp without CURVE (a warning is logged)"
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=RESTART_INTENSITY,
        help="a role restarted more than this often within --restart-window stops the node (10)",
    )
    p.add_argument(
        "--restart-window",
        type=float,
        default=RESTART_WINDOW,
        help="seconds over which --max-restarts is counted (10)",
    )


def check_topology(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Settle --roles, --listen and --connect, or exit 2 saying what to pass."""
    if args.roles is None:
        args.roles = "front" if args.connect else "writer,compactor,front"
    roles = set(args.roles.split(","))
    if not roles or not roles <= {"writer", "compactor", "front"}:
        p.error(f"--roles is a comma-separated subset of writer,compactor,front, got {args.roles}")
    if roles not in ({"writer", "compactor", "front"}, {"writer", "compactor"}, {"front"}):
        p.error(
            "--roles must be writer,compactor,front (one host), writer,compactor (the log "
            "side) or front (with --connect)"
        )
    if roles == {"front"} and not args.connect:
        p.error("--roles front needs --connect tcp://HOST:PORT (the log side's --listen)")
    if args.connect and "writer" in roles:
        p.error("--connect is for a front without a local writer: --roles front")
    if args.listen and "writer" not in roles:
        p.error("--listen is for the log side: --roles writer,compactor")
    args.roles = roles
    endpoint = args.listen or args.connect
    args.remote = None
    if endpoint is None:
        return
    try:
        sockets.parse_tcp(endpoint)
    except ValueError as err:
        p.error(str(err))
    if args.keys is None and not args.insecure:
        p.error(
            "tcp needs CURVE keys: --keys KEYDIR (make them with `walctl keygen "
            "KEYDIR`), or --insecure for plain tcp that anyone on the network can use"
        )
    if args.insecure:
        log.warning("--insecure: %s is plain tcp, unauthenticated and unencrypted", endpoint)
    args.remote = sockets.remote_from(endpoint, args)
    if args.keys is not None and not args.insecure:
        name = sockets.SERVER_KEY if args.listen else args.key_name
        try:
            sockets.key_pair(args.keys, name)
            sockets.public_key(args.keys, sockets.SERVER_KEY)
        except (OSError, ValueError) as err:
            p.error(
                f"cannot read the keys in {args.keys} ({err}); make them with "
                f"`walctl keygen {args.keys}`"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="walnode", description="a durable write-ahead log node")
    add_flags(p)
    args = p.parse_args(argv)
    from actors.writer import FsyncPolicy  # validate before starting anything

    try:
        FsyncPolicy.parse(args.fsync)
    except ValueError as err:
        p.error(str(err))
    if args.keep_snapshots < 1:
        # with none kept, the log is compacted below a snapshot that is then deleted
        p.error(
            f"--keep-snapshots must be at least 1 (got {args.keep_snapshots}): the log is "
            f"compacted below the snapshots kept, so without one the state would be lost"
        )
    check_topology(p, args)
    run_dir = tempfile.mkdtemp(prefix="walnode-run-")  # 0700: only this user can connect
    try:
        data_dir = lock_fd = None
        if "writer" in args.roles:
            if args.data_dir is None:
                data_dir = tempfile.mkdtemp(prefix="walnode-data-")
                log.info("no --data-dir given: this run keeps its log in %s", data_dir)
            else:
                data_dir = args.data_dir
            try:
                datadir = DataDir(data_dir)
                lock_fd = datadir.lock(f"walnode supervisor pid {os.getpid()}")
            except DirectoryLocked as err:
                log.error("%s", err)
                return 2
            except (WalError, OSError) as err:
                log.error("cannot use data directory %s: %s", data_dir, err)
                return 2
        sup = Supervisor(args, data_dir, run_dir, lock_fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: setattr(sup, "stopping", True))
        return sup.run()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
