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
from actors import metrics, rundir, sockets, startup
from actors import spare as spare_role
from actors.codes import Exit
from actors.config import NodeConfig, process_argv
from actors.runtime import setup_logging
from wal import DataDir, DirectoryLocked, WalError

log = setup_logging("supervisor")

# exit codes that restarting cannot fix, and what each means for the node
FATAL_EXITS = {
    "writer": {
        Exit.CORRUPT: "the log is corrupt or acknowledged data is missing",
        Exit.LOCKED: "the data directory is locked",
        Exit.CANNOT_LISTEN: "it cannot listen on --listen's address",
        Exit.USAGE: "its cluster settings contradict the cluster's in etcd",
    },
    "compactor": {
        Exit.CORRUPT: "no snapshot and log from which to rebuild the state",
        Exit.CANNOT_LISTEN: "it cannot listen on --listen's port + 1",
    },
}
# who is told when a role goes down or comes back
DEPENDENTS = {"writer": ("front", "compactor"), "compactor": ("front",), "front": ()}

# Children run as `python -m actors.<role>`: from a checkout its root goes on
# their path; an installed walnode (walnode_entry.supervisor) has actors in
# site-packages already.
_CHECKOUT = None if __package__ else os.path.dirname(os.path.abspath(__file__))
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [_CHECKOUT, os.environ.get("PYTHONPATH")])),
}

RESTART_BACKOFF_MIN = 0.02  # the second restart in a row waits this long (the first: none)
RESTART_BACKOFF_MAX = 1.0
FRONT_STOP_NOW_WAIT = 2.0  # a front stopping at once writes its errors, or is killed
CHILD_STOP_WAIT = 5.0  # the compactor and the writer finish their batch, or are killed
PING_EVERY = 0.5  # seconds between heartbeats to each ready child ...
STALLED_AFTER = 3.0  # ... and a ready child silent this long is "stalled" in status
SPARE_DELAY = 0.5  # seconds with every process ready before the spares start
SPARE_DELAY_MAX = 60.0  # a spare that keeps dying on its own is replaced at most this often


def child(role: str) -> list[str]:
    """The command that starts a role's process (its flags follow)."""
    # -P: `-m` would put the working directory first on sys.path, and an actors/
    # package there (another checkout, a user's project) would run as this role
    return [sys.executable, "-P", "-m", f"actors.{role}"]


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
    last_seen: float | None = None  # monotonic time of its last READY or PONG
    report: dict | None = None  # what its last PONG said of itself (a replica: replication)
    keeps_spare: bool = False  # a spare waits to replace it (the writer, beside a local front)
    spare: subprocess.Popen | None = None
    spare_promote_fd: int | None = None  # the supervisor's end of the spare's pipe
    spare_deaths: int = 0  # spares that died on their own in a row: each doubles the delay

    def status(self, now: float) -> dict:
        """Its entry in `status`: a ready child that stopped answering the
        heartbeat (SIGSTOPped, or stuck) is "stalled"."""
        age = None if self.last_seen is None or self.proc is None else now - self.last_seen
        state = self.state
        if state == "ready" and age is not None and age > STALLED_AFTER:
            state = "stalled"
        last_seen_ms = None if age is None else round(age * 1000)
        entry = {
            "role": self.role,
            "pid": self.pid,
            "restarts": self.restarts,
            "state": state,
            "last_seen_ms": last_seen_ms,
        }
        if self.keeps_spare:
            entry["spare_pid"] = self.spare.pid if self.spare is not None else None
        return entry

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        if not self._promote_spare():
            self.proc = self._spawn(self.argv, self.pass_fds)
            log.info("started %s pid %d", self.role, self.proc.pid)
        self.state = "starting"
        self.restart_at = None
        self.last_seen = None

    def _spawn(self, argv: list[str], pass_fds: tuple[int, ...]) -> subprocess.Popen:
        stdio = {} if self.inherit_stdio else {"stdin": subprocess.DEVNULL, "stdout": sys.stderr}
        return subprocess.Popen(argv, pass_fds=pass_fds, env=CHILD_ENV, **stdio)

    # -- the spare (actors/spare.py): started ahead, imported, promoted at a restart --

    def start_spare(self) -> None:
        """Start this role's spare, if it keeps one and has none. It waits on a
        pipe whose other end only the supervisor holds (close_fds keeps it out
        of every other child), so it learns of a stop by end of file too."""
        if not self.keeps_spare or self.spare is not None:
            return
        read_end, self.spare_promote_fd = os.pipe()
        try:
            argv = [*self.argv, "--spare-fd", str(read_end)]
            self.spare = self._spawn(argv, (*self.pass_fds, read_end))
        finally:
            os.close(read_end)
        log.info("started a spare %s, pid %d", self.role, self.spare.pid)

    def _promote_spare(self) -> bool:
        """Make the spare this role's process (True), if there is a live one."""
        spare, fd = self.spare, self.spare_promote_fd
        self.spare = self.spare_promote_fd = None
        if spare is None or fd is None:
            return False
        try:
            if spare.poll() is not None:
                log.warning("the spare %s (pid %d) had exited", self.role, spare.pid)
                return False
            os.write(fd, spare_role.PROMOTE)
        except BrokenPipeError:  # it died just now
            spare.wait()
            return False
        finally:
            os.close(fd)
        self.proc = spare
        self.spare_deaths = 0  # it served its purpose
        log.info("promoted the spare %s, pid %d", self.role, spare.pid)
        return True

    def spare_exited(self) -> bool:
        """Reap a spare that died on its own (True): a kill, or a failed import.
        Its successor waits spare_delay(); a spare promoted later is not one."""
        spare = self.spare
        if spare is None or spare.poll() is None:
            return False
        log.warning(
            "the spare %s (pid %d) %s; another starts in %g s",
            self.role,
            spare.pid,
            describe_exit(spare.returncode),
            self.spare_delay(self.spare_deaths + 1),
        )
        self.spare_deaths += 1
        self.stop_spare()  # closes its pipe; it is reaped already
        return True

    def spare_delay(self, deaths: int | None = None) -> float:
        """How long after every process is ready its next spare starts."""
        n = self.spare_deaths if deaths is None else deaths
        return min(SPARE_DELAY * 2**n, SPARE_DELAY_MAX)

    def stop_spare(self) -> None:
        """Kill and reap the spare: it holds nothing and has done nothing."""
        spare, fd = self.spare, self.spare_promote_fd
        self.spare = self.spare_promote_fd = None
        if fd is not None:
            os.close(fd)
        if spare is not None:
            spare.kill()
            spare.wait()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    def __init__(
        self,
        config: NodeConfig,
        data_dir: str | None,
        run_dir: str,
        lock_fd: int | None,
        metrics_server: metrics.MetricsServer | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.max_restarts = config.supervisor.max_restarts
        self.restart_window = config.supervisor.restart_window
        self.metrics = metrics_server  # None without --metrics-listen
        self.ctx = zmq.Context()
        self.control = sockets.bind_router(
            self.ctx, sockets.supervisor_endpoint(run_dir), handover=True
        )
        me = os.getpid()
        listen = config.listen.argv("--listen") if config.listen else []
        connect = config.connect.argv("--connect") if config.connect else []
        connect += config.follow.argv() if config.follow else []
        # a replica of a cluster (docs/REPLICATION.md) owns the log in the writer's place
        log_owner = "replica" if config.cluster.enabled else "writer"
        writer_argv = [*child(log_owner), *process_argv(run_dir, me, data_dir), *listen]
        writer_argv += ["--lock-fd", str(lock_fd), *config.writer.argv()]
        writer_argv += config.cluster.argv() if config.cluster.enabled else []
        compactor_argv = [*child("compactor"), *process_argv(run_dir, me, data_dir), *listen]
        compactor_argv += config.compactor.argv()
        if config.cluster.cluster is not None:  # it serves kv_get only as the replica says
            compactor_argv += ["--cluster", config.cluster.cluster]
        front_argv = [*child("front"), *process_argv(run_dir, me), *connect]
        front_argv += config.front.argv()
        # A spare writer cuts a restart's interpreter start and imports (actors/spare.py).
        # Not for a replica, and not for a log side serving remote fronts: those find the
        # writer again through their connection's reconnect backoff and handshake, and
        # tell its process from its spare's by the command line.
        spare = log_owner == "writer" and "front" in config.roles and config.listen is None
        every = {
            "writer": Child(
                "writer", writer_argv, pass_fds=(lock_fd,) if lock_fd else (), keeps_spare=spare
            ),
            "compactor": Child("compactor", compactor_argv),
            "front": Child("front", front_argv, inherit_stdio=True),
        }
        self.start_order = [role for role in every if role in config.roles]
        self.children = {role: every[role] for role in self.start_order}
        self.last_recovery: dict | None = None
        self.recoveries: dict[str, dict] = {}  # each role's latest
        self.stopping = False  # shut the children down and exit
        self.exit_code = 0
        self.stop_timeout = config.supervisor.stop_timeout
        self.stop_mode: str | None = None  # the front's STOP: drain, then now
        self.stop_deadline = 0.0  # drain until then, then stop at once
        self.front_kill_at = 0.0  # a front stopping at once is killed after this
        self.spares_due: float | None = None  # when to start the spares (actors/spare.py)

    # -- status ------------------------------------------------------------

    def status(self) -> dict:
        procs = [{"role": "supervisor", "pid": os.getpid(), "restarts": 0, "state": "ready"}]
        now = time.monotonic()
        procs += [self.children[role].status(now) for role in self.start_order]
        status = {
            "processes": procs,
            "last_recovery": self.last_recovery,
            "recoveries": self.recoveries,
        }
        writer = self.children.get("writer")
        if writer is not None and writer.report is not None:
            status.update(writer.report)  # a replica's `replication`, as of its last PONG
        return status

    # -- messages from children ----------------------------------------------

    def on_message(self, ident: bytes, msg: list) -> None:
        kind = msg[0]
        if kind == m.READY:
            self.on_ready(msg[1], msg[2], msg[3])
        elif kind == m.STATUS:
            self.control.send_multipart([ident, m.pack([m.STATUS, msg[1], self.status()])])
        elif kind == m.PONG:
            self.on_pong(ident.decode(), msg)

    def on_ready(self, role: str, pid: int, recovery: dict | None) -> None:
        """A child has started (recovered, bound): its dependents may use it now."""
        child = self.children.get(role)
        if child is None or child.pid != pid:
            return  # a message from a process that is already gone
        child.state = "ready"
        child.last_seen = time.monotonic()
        child.backoff = 0.0  # it recovered: the next crash is restarted at once
        if recovery is not None:
            self.last_recovery = {"role": role, **recovery}
            self.recoveries[role] = self.last_recovery
            if self.metrics is not None:
                self.metrics.recovered(role, recovery["duration_ms"])
        for other in DEPENDENTS[role]:
            self.tell(other, [m.PEER, role, "ready"])
        if role == "front":  # a (re)started front learns who is up (if they are here)
            for peer in ("writer", "compactor"):
                if peer in self.children:
                    state = "ready" if self.children[peer].state == "ready" else "down"
                    self.tell("front", [m.PEER, peer, state])
            if self.stop_mode is not None:
                self.tell("front", [m.STOP, self.stop_mode])
        following = self.start_order[self.start_order.index(role) + 1 :]
        if following and self.children[following[0]].proc is None:
            nxt = self.children[following[0]]
            if nxt.restart_at is None:
                nxt.start()
        if self.stop_mode is None and all(c.state == "ready" for c in self.children.values()):
            # not at once: its imports (a CPU for ~0.3 s) would slow what the
            # processes just ready serve first
            delay = max(c.spare_delay() for c in self.children.values())
            self.spares_due = time.monotonic() + delay

    def on_pong(self, role: str, msg: list) -> None:
        child = self.children.get(role)
        if child is not None and child.pid == msg[1]:
            child.last_seen = time.monotonic()
            child.report = msg[2] if len(msg) > 2 else None

    def ping(self) -> None:
        """The heartbeat: each ready child answers from its main loop."""
        for role, child in self.children.items():
            if child.state == "ready":
                self.tell(role, [m.PING])

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
        if child.role == "front" and (code == 0 or self.stop_mode == m.STOP_NOW):
            if code == 0:
                log.info("front finished (every request it read is answered); stopping")
            self.stopping = True
            return
        if child.role == "front" and code == Exit.STDOUT_CLOSED:
            # The front logged it: no reply can be written any more, so a new
            # front would only fail again. Stop in order (the writer commits what
            # it holds); the exit status stays what it was (0 unless stopped at once).
            self.stopping = True
            return
        if self.stopping:
            return
        log.error("%s (pid %d) %s", child.role, proc.pid, child.last_exit)
        for other in DEPENDENTS[child.role]:
            self.tell(other, [m.PEER, child.role, "down"])
        fatal = FATAL_EXITS.get(child.role, {}).get(code)
        if fatal:
            self.fail(
                f"the {child.role} stopped and a restart cannot help: {fatal} "
                f"(see the message above)",
                # a setting the cluster contradicts is a bad command line: walnode exits 2
                Exit.USAGE if code == Exit.USAGE else Exit.FAILED,
            )
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

    def start_spares(self, now: float) -> None:
        """Start the spares once their delay passed with every process ready."""
        if self.spares_due is None or now < self.spares_due:
            return
        self.spares_due = None
        if self.stop_mode is None and all(c.state == "ready" for c in self.children.values()):
            for child in self.children.values():
                child.start_spare()

    @property
    def signals(self) -> int:
        """SIGTERM/SIGINT/SIGHUP received, from walnode's first moment (actors/startup.py)."""
        return startup.stop_signals_received()

    def fail(self, why: str, exit_code: int = Exit.FAILED) -> None:
        log.critical("%s", why)
        self.exit_code = exit_code
        self.stopping = True

    def watch_stop(self, now: float) -> None:
        """The graceful stop: on the first signal the front reads no more
        input and answers everything it read (it exits 0, then the rest stop
        in order); a second signal, or --stop-timeout passing, stops at once."""
        if self.signals == 0 or self.stopping:
            return
        front = self.children.get("front")
        if self.stop_mode is None:
            log.info(
                "stopping: answering every request read (at most %g s; a second signal "
                "stops at once)",
                self.stop_timeout,
            )
            self.stop_mode = m.STOP_DRAIN
            self.stop_deadline = now + self.stop_timeout
            if front is None or (front.proc is None and front.restart_at is None):
                self.stopping = True  # no front: nothing read to answer
                return
        if self.stop_mode == m.STOP_DRAIN and (self.signals > 1 or now >= self.stop_deadline):
            why = "a second signal" if self.signals > 1 else f"{self.stop_timeout:g} s passed"
            log.warning("stopping at once (%s): requests in flight get their errors", why)
            self.stop_mode = m.STOP_NOW
            self.exit_code = Exit.FAILED
            self.front_kill_at = now + FRONT_STOP_NOW_WAIT
        if front.proc is None:
            if self.stop_mode == m.STOP_NOW:
                self.stopping = True
            return
        self.tell("front", [m.STOP, self.stop_mode])  # again each pass: it may have just started
        if self.stop_mode == m.STOP_NOW and now >= self.front_kill_at:
            log.error("the front did not stop in time; killing pid %d", front.proc.pid)
            front.proc.kill()

    def run(self) -> int:
        # SIGCHLD wakes the loop at once: a dead writer's successor starts
        # without waiting out a poll interval (and a stop signal likewise).
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w)  # the stop signals' handler is startup's, installed first
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)
        if self.signals == 0:  # else nothing starts: the loop's first pass stops
            self.children[self.start_order[0]].start()
        next_ping = time.monotonic() + PING_EVERY
        while True:
            for child in self.children.values():
                if child.spare_exited() and self.stop_mode is None:
                    due_at = time.monotonic() + child.spare_delay()
                    self.spares_due = min(self.spares_due or due_at, due_at)
                if child.proc is not None:
                    code = child.proc.poll()
                    if code is not None:
                        self.on_exit(child, code)
                elif child.restart_at is not None and time.monotonic() >= child.restart_at:
                    child.restarts += 1
                    if self.metrics is not None:
                        self.metrics.restarted(child.role)
                    child.start()
            self.watch_stop(time.monotonic())
            if self.stopping:
                signal.set_wakeup_fd(-1)
                return self.shutdown()
            if time.monotonic() >= next_ping:
                self.ping()
                next_ping = time.monotonic() + PING_EVERY
            self.start_spares(time.monotonic())
            due = [c.restart_at for c in self.children.values() if c.restart_at is not None]
            due += [self.spares_due] if self.spares_due is not None else []
            wait = max(0.0, min([*due, next_ping]) - time.monotonic())
            if self.stop_mode is not None:
                wait = min(wait, 0.1)
            events = dict(poller.poll(wait * 1000))
            if wake_r in events:
                os.read(wake_r, 4096)
            if self.control in events:
                for ident, data in sockets.drain(self.control, multipart=True):
                    self.on_message(ident, m.unpack(data))

    def shutdown(self) -> int:
        """Stop the front (if it still runs: a child gave up), the compactor,
        then the writer (which commits what it holds and exits)."""
        wait = CHILD_STOP_WAIT if self.stop_mode != m.STOP_NOW else FRONT_STOP_NOW_WAIT
        for child in self.children.values():
            child.stop_spare()
        for role in reversed(self.start_order):
            child = self.children[role]
            if child.proc is None:
                continue
            if child.state == "starting":
                # Recovering (or waiting for the writer): it reads no STOP yet, and it
                # has served nothing; a kill is a crash, which its next start recovers.
                log.info("stopping the %s during its start (pid %d)", role, child.proc.pid)
                child.proc.kill()
            else:
                stop = [m.STOP, m.STOP_NOW] if role == "front" else [m.STOP]
                self.control.send_multipart([role.encode(), m.pack(stop)])
            try:
                child.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                log.error("%s did not stop in %g s; killing pid %d", role, wait, child.proc.pid)
                child.proc.kill()
                child.proc.wait()
        self.control.close()
        self.ctx.term()
        return self.exit_code


def stopped_before_start() -> bool:
    """True (and logged) if a stop signal came before any process started:
    nothing was read, so there is nothing to answer; walnode exits 0."""
    if startup.stop_signals_received() == 0:
        return False
    log.info(
        "stopping: %s came before any process started (nothing was read)",
        startup.first_stop_signal(),
    )
    return True


def run(config: NodeConfig) -> int:
    """Run one walnode: take the data directory, start the processes, stop
    them at the end; the exit status (Exit). A stop signal at any point,
    from walnode's first moment (node.py), stops it cleanly."""
    startup.record_stop_signals()  # node.py did, before its imports: this is for other callers
    if stopped_before_start():
        return Exit.OK
    run_dir = rundir.create()  # 0700: only this user can connect
    try:
        # bound first: an address it cannot listen on stops walnode (exit 2)
        # before a data directory is created or locked
        server = metrics.serve(config.metrics_listen, run_dir, config.roles, CHILD_ENV)
        data_dir = lock_fd = None
        if "writer" in config.roles:
            if config.data_dir is None:
                data_dir = tempfile.mkdtemp(prefix="walnode-data-")
                log.info("no --data-dir given: this run keeps its log in %s", data_dir)
            else:
                data_dir = config.data_dir
            try:
                datadir = DataDir(data_dir)
                lock_fd = datadir.lock(f"walnode supervisor pid {os.getpid()}")
            except DirectoryLocked as err:
                log.error("%s", err)
                return Exit.USAGE
            except (WalError, OSError) as err:
                log.error("cannot use data directory %s: %s", data_dir, err)
                return Exit.USAGE
        if stopped_before_start():
            return Exit.OK
        sup = Supervisor(config, data_dir, run_dir, lock_fd, server)
        return sup.run()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
