"""The walnode client: a walnode child process driven over its pipes.

`Client.spawn` starts walnode (`python node.py ...`, as a user starts it),
writes JSON request lines to its stdin and matches the reply lines on its
stdout to requests by `in_reply_to`. One thread reads stdout, one stderr;
any number of requests may be in flight (`append_async` and
`request_async` return futures). Every request has a deadline: one that
passes it fails with `WalnodeError` code 0 (timeout), as does every
request still waiting when walnode's stdout closes (code 13: it may or may
not have happened; a walnode that exits before it answers spawn's init
raises WalnodeExited, code 11, with its exit status and log). docs/CLIENT.md
is the guide; docs/PROTOCOL.md the messages.

The tools and tests that need more than requests and replies use the same
object: `on_unmatched` receives every line that answers no request of this
client, parsed and as printed (a harness that writes its own lines with
`send_lines` gets its replies there), `on_stderr` every log line, `on_eof`
the end of stdout.
"""

from __future__ import annotations

import heapq
import math
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import IO, Any, Self, TypeVar

import orjson

from actors.codes import DEFINITE, Code

T = TypeVar("T")
READ_CHUNK = 1 << 20
STDERR_TAIL_LINES = 20  # of walnode's log, in the error of a walnode that exited at start
DEFAULT_TIMEOUT = 10.0  # seconds; walnode's own --request-timeout is 10 s
# node.py sits beside the installed packages (site-packages or a checkout)
NODE_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "node.py")


def node_command() -> list[str]:
    """How to start walnode: this interpreter on node.py, else the `walnode` script."""
    if os.path.exists(NODE_PY):
        return [sys.executable, NODE_PY]
    script = shutil.which("walnode")
    if script is None:
        raise FileNotFoundError(f"neither {NODE_PY} nor a `walnode` command on PATH")
    return [script]


def _wait_for(fd: int, event: int, seconds: float) -> bool:
    """Wait up to `seconds` for `event` (select.POLLIN/POLLOUT, or the pipe's
    end) on `fd`; True if it came. poll, not select: select fails on an fd
    past 1024, and the caller's process may have that many open."""
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(max(0, math.ceil(seconds * 1000))))


class WalnodeError(Exception):
    """An error reply, a timeout, or walnode gone before it replied.

    `code` is the protocol's (`actors.codes.Code`); `definite` is True when
    the request certainly did not happen (codes 10, 11, 12, 20, 22), False
    after 0 (timeout) and 13 (crash), where it may have. `reply` is the
    error body as walnode sent it (None for a timeout or a closed pipe)."""

    def __init__(self, code: int, text: str, reply: dict | None = None) -> None:
        super().__init__(f"walnode error {code}: {text}")
        self.code = code
        self.text = text
        self.definite = code in DEFINITE
        self.reply = reply

    @classmethod
    def from_reply(cls, body: Mapping[str, Any]) -> WalnodeError:
        return cls(int(body.get("code", Code.CRASH)), str(body.get("text", "")), dict(body))


class WalnodeExited(WalnodeError):
    """walnode exited before it answered the `init` that `Client.spawn`
    sends: a flag out of range, a locked data directory, a crash at start.
    Code 11 and definite (no request but that init was sent, and it is the
    same on every spawn). `exit_status` is walnode's (2 for a bad flag or a
    locked directory), `stderr_tail` the end of its log, which says why."""

    def __init__(self, exit_status: int, stderr_tail: str) -> None:
        why = stderr_tail.strip() or "(its log went to the stderr given to spawn)"
        super().__init__(
            Code.TEMPORARILY_UNAVAILABLE,
            f"walnode exited with status {exit_status} before it answered init, so no "
            f"request was served; its log ends:\n{why}",
        )
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail


def _unsendable(body: Mapping[str, Any], err: Exception) -> WalnodeError:
    """Error 12 for a request orjson cannot write as JSON text (nothing was
    sent), naming the field that holds a lone surrogate if one does."""
    for name, value in body.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as bad:
                return WalnodeError(
                    Code.MALFORMED_REQUEST,
                    f"{name} is not valid UTF-8 text: it holds a lone surrogate "
                    f"({value[bad.start]!r} at index {bad.start}), which JSON text cannot "
                    f"carry; nothing was sent: send text, or bytes encoded as text (base64)",
                )
    return WalnodeError(
        Code.MALFORMED_REQUEST, f"the request cannot be written as JSON ({err}); nothing was sent"
    )


# -- what the typed calls return -------------------------------------------


@dataclass(frozen=True, slots=True)
class Appended:
    """A durable append (under --fsync always): where it went, as stored."""

    offset: int
    length: int
    checksum: str


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry read back; `checksum_valid` is False for a rotted record."""

    offset: int
    payload: str
    checksum_valid: bool = True


@dataclass(frozen=True, slots=True)
class ScanResult:
    entries: list[Entry]
    next_offset: int  # where the next scan starts


@dataclass(frozen=True, slots=True)
class Info:
    """wal_info_ok (docs/PROTOCOL.md)."""

    entries: int
    total_bytes: int
    fsynced: bool
    first_offset: int
    next_offset: int
    segments: int
    snapshot_offset: int | None
    fsync_policy: str
    group_commit: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KvValue:
    key: str
    value: str
    applied_offset: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    snapshot_offset: int
    snapshot_size_bytes: int


@dataclass(frozen=True, slots=True)
class Compacted:
    snapshot_offset: int
    entries_before: int
    entries_after: int
    bytes_freed: int


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    role: str
    pid: int | None
    restarts: int
    state: str  # starting, ready, down
    spare_pid: int | None = None  # its spare, on a role that keeps one (the writer)


@dataclass(frozen=True, slots=True)
class Status:
    node_id: str | None
    processes: list[ProcessInfo]
    last_recovery: dict | None
    recoveries: dict = field(default_factory=dict)

    def pids(self) -> dict[str, int | None]:
        return {p.role: p.pid for p in self.processes}

    def process(self, role: str) -> ProcessInfo:
        return next(p for p in self.processes if p.role == role)


def _fields(cls: type[T], body: Mapping[str, Any]) -> T:
    """`cls` from the reply fields it names (a reply may carry more)."""
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return cls(**{k: v for k, v in body.items() if k in names})


def _status(body: Mapping[str, Any]) -> Status:
    procs = [_fields(ProcessInfo, p) for p in body.get("processes", [])]
    return Status(body.get("node_id"), procs, body.get("last_recovery"), body.get("recoveries", {}))


# -- the client --------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    future: Future
    convert: Callable[[dict], Any] | None  # None: the raw body, error or not
    timeout: float


def start_walnode(
    data_dir: str | os.PathLike | None = None,
    args: Sequence[str] = (),
    *,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stderr: IO[bytes] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen:
    """walnode as a child with pipes on stdin and stdout (and stderr, unless
    a file is given for it). `preexec_fn` runs in the child before walnode
    starts (for example resource limits that its whole tree inherits)."""
    argv = [*(command or node_command())]
    if data_dir is not None:
        argv += ["--data-dir", os.fspath(data_dir)]
    return subprocess.Popen(
        [*argv, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr if stderr is not None else subprocess.PIPE,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec_fn,
    )


class Child:
    """A walnode child's lifecycle: end of input, kill, reap."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self._threads: list[threading.Thread] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self, timeout: float = 30.0) -> int:
        """End of input: walnode answers what it read and exits; its exit
        status. Killed (and reaped) if it has not exited within `timeout`."""
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except OSError:
            pass  # it is gone already
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise WalnodeError(Code.TIMEOUT, f"walnode did not exit within {timeout} s") from None
        self._join()
        return rc

    def kill(self) -> None:
        """SIGKILL walnode's supervisor (its children die with it: they ask
        the kernel to kill them when it dies) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._join()

    def _join(self) -> None:
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.kill()


class Client(Child):
    """A walnode child process and the requests in flight to it.

    Use as a context manager (`with Client.spawn(...) as c:`): at the end
    stdin is closed, walnode answers what it read and exits, and the child
    is reaped (killed if it does not exit in time)."""

    def __init__(
        self,
        proc: subprocess.Popen,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        src: str = "c1",
        dest: str = "n1",
        first_msg_id: int = 1,
        on_unmatched: Callable[[dict, bytes, float], None] | None = None,
        on_stderr: Callable[[str], None] | None = None,
        on_eof: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(proc)
        self.timeout = timeout
        self.src, self.dest = src, dest
        self.on_unmatched = on_unmatched
        self.on_stderr = on_stderr
        self.on_eof = on_eof
        self.unmatched: list[dict] = []  # replies to no request of ours (without on_unmatched)
        self.stderr_lines: list[str] = []  # walnode's log (without on_stderr)
        self.closed = threading.Event()  # stdout ended
        self._lock = threading.Lock()  # _pending, _deadlines, _next_id
        self._write_lock = threading.Lock()  # one writer of stdin at a time: whole lines
        self._pending: dict[int, _Pending] = {}
        self._deadlines: list[tuple[float, int]] = []  # heap of (deadline, msg_id)
        self._next_id = first_msg_id
        self._threads.append(threading.Thread(target=self._read_stdout, daemon=True))
        if proc.stderr is not None:
            self._threads.append(threading.Thread(target=self._read_stderr, daemon=True))
        for t in self._threads:
            t.start()

    @classmethod
    def spawn(
        cls,
        data_dir: str | os.PathLike | None = None,
        args: Sequence[str] = (),
        *,
        init: bool = True,
        node_id: str = "n1",
        node_ids: Sequence[str] | None = None,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stderr: IO[bytes] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        **options: Any,
    ) -> Client:
        """Start walnode with `--data-dir data_dir` (if given) and `args`, and
        (with `init`) send `init` as `node_id`. `stderr`: a file for walnode's
        log instead of `stderr_lines`. `options` go to `Client(...)`."""
        proc = start_walnode(
            data_dir, args, command=command, env=env, cwd=cwd, stderr=stderr, preexec_fn=preexec_fn
        )
        client = cls(proc, dest=node_id, **options)
        if init:
            try:
                client.init(node_id, node_ids)
            except WalnodeError as err:
                if err.reply is not None or err.code != Code.CRASH:
                    client.kill()
                    raise
                raise client._exited_at_start() from None  # stdout closed: walnode is going
            except BaseException:
                client.kill()
                raise
        return client

    def _exited_at_start(self) -> WalnodeExited:
        """walnode closed stdout before answering init: reap it (killed if
        it lingers) and read the end of its log."""
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass  # kill() below ends it
        self.kill()  # also joins the stderr reader, so the log is complete
        tail = "".join(self.stderr_lines[-STDERR_TAIL_LINES:])
        return WalnodeExited(self.proc.returncode, tail)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and not self.closed.is_set()

    def stderr_text(self) -> str:
        return "".join(self.stderr_lines)

    # -- sending -----------------------------------------------------------

    def send_lines(self, data: bytes) -> None:
        """Write whole request lines as they are (the lean path for a load
        generator that numbers its own msg_ids; their replies go to
        `on_unmatched`). Blocks while the pipe is full."""
        with self._write_lock:
            self._write_unlocked(data)

    def line(self, body: Mapping[str, Any], src: str | None = None) -> bytes:
        """One request line in the protocol's envelope."""
        message = {"src": src or self.src, "dest": self.dest, "body": body}
        try:
            return orjson.dumps(message) + b"\n"
        except orjson.JSONEncodeError as err:  # a lone surrogate, an int past 64 bits
            raise _unsendable(body, err) from None

    def request_async(
        self,
        body: Mapping[str, Any],
        timeout: float | None = None,
        src: str | None = None,
        convert: Callable[[dict], Any] | None = None,
    ) -> Future:
        """Send one request (its msg_id is assigned here: `future.msg_id`). The future's
        result is the reply body, an error reply included; with `convert`,
        an error reply raises WalnodeError and an _ok becomes convert(body).
        A reply that does not come within `timeout` raises WalnodeError 0."""
        return self.requests_async([body], timeout, src, convert)[0]

    def requests_async(
        self,
        bodies: Iterable[Mapping[str, Any]],
        timeout: float | None = None,
        src: str | None = None,
        convert: Callable[[dict], Any] | None = None,
    ) -> list[Future]:
        """Like request_async for many, written to stdin in one go (in order)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        futures = []
        with self._write_lock:  # msg_id order is stdin order
            with self._lock:
                first = self._next_id
                # every line first: one that cannot be written (error 12) leaves nothing sent
                lines = [
                    self.line({**body, "msg_id": first + i}, src) for i, body in enumerate(bodies)
                ]
                self._next_id = first + len(lines)
                for msg_id in range(first, self._next_id):
                    future: Future = Future()
                    future.msg_id = msg_id  # type: ignore[attr-defined]  # for harnesses
                    self._pending[msg_id] = _Pending(future, convert, timeout)
                    heapq.heappush(self._deadlines, (deadline, msg_id))
                    futures.append(future)
            if self.closed.is_set():
                self._fail_all("walnode's stdout is closed")
            self._write_unlocked(b"".join(lines))
        return futures

    def _write_unlocked(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.proc.stdin.fileno(), view) :]
        except OSError:
            self.closed.set()  # walnode is gone; its stdout reader fails the waiting

    def request(
        self, body: Mapping[str, Any], timeout: float | None = None, src: str | None = None
    ) -> dict:
        """Send one request and wait for its reply body (an error reply
        included: check `type`). A timeout raises WalnodeError 0."""
        return wait(self.request_async(body, timeout, src))

    def call(
        self, body: Mapping[str, Any], timeout: float | None = None, src: str | None = None
    ) -> dict:
        """Send one request; its _ok body, or WalnodeError for an error reply."""
        return wait(self.request_async(body, timeout, src, convert=_ok_body))

    # -- the protocol's requests ---------------------------------------------

    def init(self, node_id: str = "n1", node_ids: Sequence[str] | None = None) -> None:
        self.dest = node_id
        body = {"type": "init", "node_id": node_id, "node_ids": list(node_ids or [node_id])}
        self.call(body, src="c0")

    def append(self, payload: str, timeout: float | None = None) -> Appended:
        """Append and wait for the ack (durable under --fsync always)."""
        return wait(self.append_async(payload, timeout))

    def append_async(self, payload: str, timeout: float | None = None) -> Future:
        """Append without waiting: a future of Appended. Appends get offsets
        in the order they are sent, so many in flight are pipelined."""
        body = {"type": "wal_append", "payload": payload}
        return self.request_async(body, timeout, convert=lambda b: _fields(Appended, b))

    def read(self, offset: int, timeout: float | None = None) -> Entry:
        """The entry at `offset`; WalnodeError 20 outside the retained range."""
        body = self.call({"type": "wal_read", "offset": offset}, timeout)
        return _fields(Entry, body)

    def scan(self, from_offset: int = 0, max_entries: int = 100) -> ScanResult:
        body = self.call(
            {"type": "wal_scan", "from_offset": from_offset, "max_entries": max_entries}
        )
        return ScanResult([_fields(Entry, e) for e in body["entries"]], body["next_offset"])

    def info(self) -> Info:
        return _fields(Info, self.call({"type": "wal_info"}))

    def sync(self) -> int:
        """Force an fsync; every entry below the returned offset is durable."""
        return int(self.call({"type": "wal_sync"})["durable_offset"])

    def kv_get(self, key: str) -> KvValue:
        """The state machine's value; WalnodeError 20 for an unknown key."""
        return _fields(KvValue, self.call({"type": "kv_get", "key": key}))

    def snapshot(self, timeout: float | None = None) -> Snapshot:
        return _fields(Snapshot, self.call({"type": "wal_snapshot"}, timeout))

    def compact(self, snapshot_at_offset: int, timeout: float | None = None) -> Compacted:
        """Remove every entry below the offset; WalnodeError 22 if no
        snapshot covers it."""
        body = {"type": "wal_compact", "snapshot_at_offset": snapshot_at_offset}
        return _fields(Compacted, self.call(body, timeout))

    def segment_info(self) -> dict:
        return self.call({"type": "wal_segment_info"})

    def segment_config(self, max_segment_bytes: int) -> int:
        body = {"type": "wal_segment_config", "max_segment_bytes": max_segment_bytes}
        return int(self.call(body)["max_segment_bytes"])

    def status(self, timeout: float | None = None) -> Status:
        return _status(self.call({"type": "status"}, timeout))

    # -- receiving -----------------------------------------------------------

    def _read_stdout(self) -> None:
        try:
            self._pump_stdout()
        finally:  # also if a hook raised: nothing waits forever
            self.closed.set()
            self._fail_all(f"walnode closed its stdout (exit status {self.proc.poll()})")
            if self.on_eof is not None:
                self.on_eof()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        fd, rest = self.proc.stdout.fileno(), b""
        while True:
            if not _wait_for(fd, select.POLLIN, self._until_next_deadline()):
                self._expire()
                continue
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                break
            t = time.monotonic()
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for raw in lines:
                self._dispatch(raw, t)
            self._expire()
        if rest:  # a last line without its newline: still shown, never dropped
            self._dispatch(rest, time.monotonic())

    def _dispatch(self, raw: bytes, t: float) -> None:
        try:
            message = orjson.loads(raw)
            msg_id = message["body"].get("in_reply_to")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            message, msg_id = {"unparsed": raw.decode(errors="replace")}, None
        with self._lock:
            pending = self._pending.pop(msg_id, None) if type(msg_id) is int else None
        if pending is None:
            if self.on_unmatched is not None:
                self.on_unmatched(message, raw, t)
            else:
                self.unmatched.append(message)
            return
        body = message["body"]
        if pending.convert is None:
            pending.future.set_result(body)
        elif body.get("type") == "error":
            pending.future.set_exception(WalnodeError.from_reply(body))
        else:
            try:
                pending.future.set_result(pending.convert(body))
            except (KeyError, TypeError) as err:  # a reply without its fields
                pending.future.set_exception(WalnodeError(Code.CRASH, f"bad reply {body}: {err}"))

    def _until_next_deadline(self) -> float:
        with self._lock:
            if not self._deadlines:
                return 1.0
            return max(0.0, min(1.0, self._deadlines[0][0] - time.monotonic()))

    def _expire(self) -> None:
        now, expired = time.monotonic(), []
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                _, msg_id = heapq.heappop(self._deadlines)
                pending = self._pending.pop(msg_id, None)
                if pending is not None:
                    expired.append(pending)
        for pending in expired:
            text = (
                f"no reply within {pending.timeout} s: the request may or may not have "
                f"happened; read the log (read, scan, info) to find out"
            )
            pending.future.set_exception(WalnodeError(Code.TIMEOUT, text))

    def _fail_all(self, why: str) -> None:
        with self._lock:
            waiting, self._pending = list(self._pending.values()), {}
            self._deadlines.clear()
        for pending in waiting:
            text = f"{why} before it replied: the request may or may not have happened"
            pending.future.set_exception(WalnodeError(Code.CRASH, text))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace")
            if self.on_stderr is not None:
                self.on_stderr(line.rstrip("\n"))
            else:
                self.stderr_lines.append(line)


def _ok_body(body: dict) -> dict:
    return body


def wait(future: Future) -> Any:
    """The future's result. Its deadline is the client's: a reply that does
    not come raises WalnodeError 0 from the reader, so no timeout here."""
    return future.result()


class LeanPipes(Child):
    """walnode over its pipes with no threads: the caller writes and reads
    the non-blocking fds (`wfd`, `rfd`) itself, as `walctl bench`'s closed
    loop does, where a reader thread would add its own time to every
    latency measured. `call` sends one request while nothing else is in
    flight; other replies read meanwhile collect in `unmatched`."""

    def __init__(self, proc: subprocess.Popen, src: str = "c0", dest: str = "n1") -> None:
        super().__init__(proc)
        assert proc.stdin is not None and proc.stdout is not None
        self.src, self.dest = src, dest
        self.wfd, self.rfd = proc.stdin.fileno(), proc.stdout.fileno()
        for fd in (self.wfd, self.rfd):
            os.set_blocking(fd, False)
        self.leftover = b""  # the start of a line whose end is not read yet
        self.unmatched: list[bytes] = []

    @classmethod
    def spawn(
        cls,
        data_dir: str | os.PathLike | None = None,
        args: Sequence[str] = (),
        **how: Any,
    ) -> LeanPipes:
        """walnode started as `start_walnode(data_dir, args, **how)` starts it."""
        return cls(start_walnode(data_dir, args, **how))

    def write_all(self, data: bytes, timeout: float = 30) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            try:
                view = view[os.write(self.wfd, view) :]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WalnodeError(Code.TIMEOUT, "walnode stopped reading stdin") from None
                _wait_for(self.wfd, select.POLLOUT, 0.1)
            except BrokenPipeError:
                raise WalnodeError(Code.CRASH, "walnode closed stdin") from None

    def read_chunk(self) -> bytes:
        """What stdout holds now (b"" if nothing); WalnodeError 13 once it is closed."""
        try:
            chunk = os.read(self.rfd, READ_CHUNK)
        except BlockingIOError:
            return b""
        if not chunk:
            status = self.proc.poll()
            raise WalnodeError(Code.CRASH, f"walnode closed stdout (exit status {status})")
        return chunk

    def call(self, body: Mapping[str, Any], msg_id: int, timeout: float = 30) -> dict:
        """Send one request with this msg_id; its reply body (error or not)."""
        message = {"src": self.src, "dest": self.dest, "body": {**body, "msg_id": msg_id}}
        self.write_all(orjson.dumps(message) + b"\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _wait_for(self.rfd, select.POLLIN, 0.2)
            *lines, self.leftover = (self.leftover + self.read_chunk()).split(b"\n")
            for raw in lines:
                reply = orjson.loads(raw)["body"]
                if reply.get("in_reply_to") == msg_id:
                    return reply
                self.unmatched.append(raw)
        raise WalnodeError(Code.TIMEOUT, f"no reply to {body.get('type')} within {timeout} s")
