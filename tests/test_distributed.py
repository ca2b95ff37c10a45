"""Distributed deployment: fronts on other hosts reach one writer over tcp.

The log side runs as `node.py --roles writer,compactor --listen tcp://...`
(no front, no stdin); each front is `node.py --connect tcp://...`, the usual
JSON lines on its stdin and stdout. Everything runs on 127.0.0.1 with real
processes, CURVE keys from `walctl keygen`, and real kills by pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from actors import procfs
from tests.nodeproc import NODE, REPO, Node, pid_alive, wait_until, walctl
from walctl.localcluster import free_ports

NODE_IDS = ["n1", "n2"]


# -- helpers -------------------------------------------------------------------


def children(pid: int) -> dict[int, str]:
    """The live children of `pid` and their command lines."""
    return {child: " ".join(argv) for child, argv in procfs.children(pid).items()}


class LogSide:
    """One `node.py --roles writer,compactor` process, output in files."""

    def __init__(self, args: list[str], port: int, out_dir: Path, env: dict[str, str]) -> None:
        self.port = port
        self.stderr_path = out_dir / f"logside-{port}.stderr"
        # files, not pipes: nobody has to drain them while the test runs
        self._out: IO[bytes] = open(out_dir / f"logside-{port}.stdout", "wb")
        self._err: IO[bytes] = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, NODE, *args],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            cwd=REPO,
            env=env,
        )

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_listening(self, timeout: float = 15) -> None:
        """Until the writer (PORT) and the compactor (PORT+1) accept connections.

        The writer binds its tcp socket only after recovery, so a connection
        means it serves. A bare tcp connect that sends nothing is harmless to zmq.
        """
        deadline = time.monotonic() + timeout
        for port in (self.port, self.port + 1):
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"log side exited {self.proc.returncode}; stderr:\n{self.stderr()}"
                    )
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise AssertionError(
                            f"nothing listens on {port}; stderr:\n{self.stderr()}"
                        ) from None
                    time.sleep(0.02)

    def pid_of(self, module: str) -> int | None:
        """The pid of the child running `python -m actors.<module>`, if any."""
        for pid, cmdline in children(self.proc.pid).items():
            if f"actors.{module}" in cmdline:
                return pid
        return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Signal by pid, wait; SIGKILL if it does not go. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()
        self._err.close()
        return self.proc.returncode


@pytest.fixture
def log_side_factory(tmp_path: Path) -> Iterator[Callable[..., LogSide]]:
    """Start log sides; every one is stopped by pid and reaped at the end."""
    started: list[LogSide] = []
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # its run directory lands in tmp_path

    def start(*extra: str, data_dir: str | None = None, wait: bool = True) -> LogSide:
        port = free_ports(2)
        args = ["--roles", "writer,compactor", "--listen", f"tcp://127.0.0.1:{port}"]
        args += ["--data-dir", data_dir or str(tmp_path / f"data-{port}"), *extra]
        side = LogSide(args, port, tmp_path, env)
        started.append(side)
        if wait:
            side.wait_listening()
        return side

    yield start
    for side in started:
        side.stop()


@pytest.fixture
def keys(tmp_path: Path) -> str:
    """A key directory from `walctl keygen`: server pair, "client" pair, clients/."""
    keydir = str(tmp_path / "keys")
    res = walctl("keygen", keydir)
    assert res.returncode == 0, res.stderr
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret"):
        assert os.path.isfile(os.path.join(keydir, name)), name
    assert os.path.isfile(os.path.join(keydir, "clients", "client.key"))
    return keydir


def front(
    node_factory: Callable[..., Node],
    side: LogSide,
    node_id: str,
    *auth: str,
    wait: float = 2,
    init: bool = True,
) -> Node:
    """A remote front (`--unavailable-wait wait`), initialised as `node_id` of NODE_IDS."""
    node = node_factory("--connect", side.endpoint, *auth, "--unavailable-wait", str(wait))
    if init:
        body = {"type": "init", "node_id": node_id, "node_ids": NODE_IDS}
        node.call_ok(body, src="c0", dest=node_id)
    return node


def append_all(node: Node, payloads: list[str], dest: str, timeout: float = 15) -> list[dict]:
    """Pipeline every append, then collect the replies' bodies in send order."""
    ids = [node.send({"type": "wal_append", "payload": p}, dest=dest) for p in payloads]
    return [node.reply_to(i, timeout)["body"] for i in ids]


def read_log(node: Node, dest: str) -> list[dict]:
    """The whole log, via wal_scan from offset 0."""
    entries: list[dict] = []
    nxt = 0
    while True:
        body = node.call_ok(
            {"type": "wal_scan", "from_offset": nxt, "max_entries": 10000}, dest=dest
        )
        if not body["entries"]:
            return entries
        entries += body["entries"]
        nxt = body["next_offset"]


def check_log(node: Node, dest: str, acked: dict[int, str], sent: set[str]) -> list[dict]:
    """The log is dense from 0, holds every acked entry, and nothing twice or unsent."""
    entries = read_log(node, dest)
    assert [e["offset"] for e in entries] == list(range(len(entries)))
    in_log = {e["offset"]: e["payload"] for e in entries}
    for offset, payload in acked.items():
        assert in_log.get(offset) == payload, f"acked offset {offset} lost"
    payloads = [e["payload"] for e in entries]
    assert len(payloads) == len(set(payloads)), "an entry is in the log twice"
    assert set(payloads) <= sent
    return entries


# -- the tests -------------------------------------------------------------------


def test_two_fronts_share_one_tcp_writer(node_factory, log_side_factory, keys):
    side = log_side_factory("--keys", keys)
    a = front(node_factory, side, "n1", "--keys", keys)
    b = front(node_factory, side, "n2", "--keys", keys)
    # interleave the two fronts' appends, all in flight at once
    ids: dict[str, list[tuple[int, str]]] = {"n1": [], "n2": []}
    for i in range(200):
        for node, nid in ((a, "n1"), (b, "n2")):
            payload = f"{nid}-{i}"
            ids[nid].append(
                (node.send({"type": "wal_append", "payload": payload}, dest=nid), payload)
            )
    got: dict[str, dict[int, str]] = {}
    for node, nid in ((a, "n1"), (b, "n2")):
        replies = [node.reply_to(mid, 15)["body"] for mid, _ in ids[nid]]
        assert all(r["type"] == "wal_append_ok" for r in replies), replies
        offsets = [r["offset"] for r in replies]
        assert offsets == sorted(offsets) and len(set(offsets)) == 200, f"{nid} out of order"
        got[nid] = {r["offset"]: p for r, (_, p) in zip(replies, ids[nid], strict=True)}
    assert sorted([*got["n1"], *got["n2"]]) == list(range(400))
    # each front reads the other's entries
    for reader, rid, other in ((a, "n1", "n2"), (b, "n2", "n1")):
        mids = {reader.send({"type": "wal_read", "offset": o}, dest=rid): o for o in got[other]}
        for mid, offset in mids.items():
            body = reader.reply_to(mid, 15)["body"]
            assert body["type"] == "wal_read_ok", body
            assert body["payload"] == got[other][offset] and body["checksum_valid"]
    info = a.call_ok({"type": "wal_info"}, dest="n1")
    assert info["entries"] == 400 and info["next_offset"] == 400
    # each front speaks as its own node id
    assert all('"src": "n1"' in line for line in a.raw)
    assert all('"src": "n2"' in line for line in b.raw)
    # SIGTERM stops the log side cleanly, and its children with it
    kids = list(children(side.proc.pid))
    assert len(kids) >= 2
    assert side.stop(signal.SIGTERM) == 0, side.stderr()
    for pid in kids:
        assert wait_until(lambda p=pid: not pid_alive(p), timeout=5), pid


def test_front_with_a_key_the_writer_does_not_allow_gets_nothing_in(
    node_factory, log_side_factory, keys
):
    res = walctl("keygen", keys, "--client", "intruder", "--no-allow")
    assert res.returncode == 0, res.stderr
    assert os.path.isfile(os.path.join(keys, "intruder.key_secret"))
    assert not os.path.exists(os.path.join(keys, "clients", "intruder.key"))
    side = log_side_factory("--keys", keys)
    good = front(node_factory, side, "n1", "--keys", keys)
    mine = [f"good-{i}" for i in range(3)]
    assert all(r["type"] == "wal_append_ok" for r in append_all(good, mine, "n1"))
    # the intruder has a well-formed key pair and the right server key: only
    # the allow list (KEYDIR/clients) keeps it out
    bad = front(
        node_factory, side, "n2", "--keys", keys, "--key-name", "intruder", wait=1, init=False
    )
    t0 = time.monotonic()
    init = bad.call({"type": "init", "node_id": "n2", "node_ids": NODE_IDS}, 10, dest="n2")
    waited = time.monotonic() - t0
    assert init["type"] == "error" and init["code"] == 11, init
    assert 0.9 < waited < 5, waited  # it waited --unavailable-wait for the writer, then gave up
    reply = bad.call({"type": "wal_append", "payload": "intruder-0"}, 10, dest="n2")
    assert reply["type"] == "error" and reply["code"] == 11, reply
    # the operator is told why, on the front's stderr
    assert "handshake" in bad.stderr_text(), bad.stderr_text()
    # the allowed front still works, and the log holds only its entries
    assert append_all(good, ["good-3"], "n1")[0]["offset"] == 3
    info = good.call_ok({"type": "wal_info"}, dest="n1")
    assert info["entries"] == 4 and info["next_offset"] == 4
    assert [e["payload"] for e in read_log(good, "n1")] == [*mine, "good-3"]


def test_plain_tcp_needs_keys_or_insecure(node_factory, log_side_factory, tmp_path):
    port = free_ports(2)
    res = subprocess.run(
        [sys.executable, NODE, "--roles", "writer,compactor"]
        + ["--listen", f"tcp://127.0.0.1:{port}", "--data-dir", str(tmp_path / "refused")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert res.returncode == 2, res.stderr
    # the message itself, not argparse's usage lines (which name every flag)
    message = " ".join(
        line
        for line in res.stderr.splitlines()
        if line and not line[0].isspace() and not line.startswith("usage:")
    )
    assert "tcp" in message and ("--keys" in message or "--insecure" in message), res.stderr
    # --insecure runs, and says loudly that it is insecure
    side = log_side_factory("--insecure")
    assert any("insecure" in line.lower() for line in side.stderr().splitlines()), side.stderr()
    node = front(node_factory, side, "n1", "--insecure")
    replies = append_all(node, ["plain-0", "plain-1"], "n1")
    assert [r["offset"] for r in replies] == [0, 1], replies
    assert node.call_ok({"type": "wal_read", "offset": 1}, dest="n1")["payload"] == "plain-1"
    assert side.stop(signal.SIGINT) == 0, side.stderr()


def test_remote_front_rides_out_a_writer_restart(node_factory, log_side_factory, keys):
    side = log_side_factory("--keys", keys)
    node = front(node_factory, side, "n1", "--keys", keys)
    acked: dict[int, str] = {}  # offset -> payload of every wal_append_ok
    order: list[int] = []  # acked offsets, in the order they were sent
    sent: set[str] = set()
    codes: list[int] = []  # error codes, in any order
    count = 0

    def send(n: int) -> list[tuple[int, str]]:
        nonlocal count
        payloads = [f"r-{count + i}" for i in range(n)]
        count += n
        sent.update(payloads)
        return [(node.send({"type": "wal_append", "payload": p}, dest="n1"), p) for p in payloads]

    def collect(ids: list[tuple[int, str]]) -> list[dict]:
        replies = [node.reply_to(mid, 15)["body"] for mid, _ in ids]
        for (_, payload), r in zip(ids, replies, strict=True):
            if r["type"] == "wal_append_ok":
                acked[r["offset"]] = payload
                order.append(r["offset"])
            else:
                codes.append(r["code"])
        return replies

    def batch(n: int) -> list[dict]:
        return collect(send(n))

    for _ in range(3):
        assert all(r["type"] == "wal_append_ok" for r in batch(20))
    before_kill = dict(acked)
    writer = side.pid_of("writer")
    assert writer is not None, children(side.proc.pid)
    # a stopped writer holds these 40 appends unanswered, so the kill surely
    # catches requests in flight (they may or may not be in the log)
    os.kill(writer, signal.SIGSTOP)
    try:
        in_flight = send(40)
        time.sleep(0.2)  # the front forwards them to the writer
    finally:
        os.kill(writer, signal.SIGKILL)
    killed_at = time.monotonic()
    replies = collect(in_flight)
    # those the writer held are 13; under load a few may still have been at the
    # front (then 11, or served by the next writer), but some were surely held
    assert 13 in codes, replies
    # keep appending until the restarted writer serves again
    back_at = None
    while back_at is None and time.monotonic() - killed_at < 10:
        if any(r["type"] == "wal_append_ok" for r in batch(5)):
            back_at = time.monotonic()
    assert back_at is not None and back_at - killed_at < 5, (back_at, killed_at, codes)
    assert wait_until(lambda: side.pid_of("writer") not in (None, writer), timeout=5)
    for _ in range(3):
        assert all(r["type"] == "wal_append_ok" for r in batch(20))
    assert set(codes) <= {11, 13}, codes  # indefinite (13) or definite (11), never 0 etc.
    assert order == sorted(order) and len(set(order)) == len(order)
    check_log(node, "n1", acked, sent)
    for offset, payload in before_kill.items():
        assert node.call_ok({"type": "wal_read", "offset": offset}, dest="n1")["payload"] == payload


def test_a_front_crashing_does_not_disturb_another(node_factory, log_side_factory, keys):
    side = log_side_factory("--keys", keys)
    a = front(node_factory, side, "n1", "--keys", keys)
    b = front(node_factory, side, "n2", "--keys", keys)
    [warm] = append_all(b, ["b-warm"], "n2")
    assert warm["type"] == "wal_append_ok", warm
    writer = side.pid_of("writer")
    # both fronts have appends in flight when b dies
    b_ids = {
        b.send({"type": "wal_append", "payload": f"b-{i}"}, dest="n2"): f"b-{i}" for i in range(100)
    }
    a_payloads = [f"a-{i}" for i in range(100)]
    a_ids = [a.send({"type": "wal_append", "payload": p}, dest="n1") for p in a_payloads]
    b_children = list(children(b.pid))
    assert b_children, "b runs its front as a child process"
    b.kill()  # SIGKILL to b's node process, by pid
    a_replies = [a.reply_to(mid, 15)["body"] for mid in a_ids]
    more = [f"a-{i}" for i in range(100, 150)]
    a_replies += append_all(a, more, "n1")
    assert all(r["type"] == "wal_append_ok" for r in a_replies), a_replies
    offsets = [r["offset"] for r in a_replies]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    # the log side never noticed: same writer, still running
    assert side.proc.poll() is None and side.pid_of("writer") == writer
    # b's own processes went with it (no orphan holds a connection to the writer)
    for pid in b_children:
        assert wait_until(lambda p=pid: not pid_alive(p), timeout=5), pid
    # what b got acknowledged before it died is in the log, like a's entries
    acked = {r["offset"]: p for r, p in zip(a_replies, a_payloads + more, strict=True)}
    acked[warm["offset"]] = "b-warm"
    for line in b.raw:
        if '"wal_append_ok"' in line:
            body = json.loads(line)["body"]
            if body["in_reply_to"] in b_ids:  # not the warm-up append, counted above
                acked[body["offset"]] = b_ids[body["in_reply_to"]]
    check_log(a, "n1", acked, {"b-warm", *b_ids.values(), *a_payloads, *more})


def test_a_silent_writer_is_noticed_by_heartbeats(node_factory, log_side_factory, keys):
    """A writer that stops answering without closing its connection (here:
    SIGSTOP, as a frozen host or a pulled cable would) is taken for lost after
    the heartbeat timeout: error 13 in seconds, not error 0 after
    --request-timeout, then 11 for new requests until it is back."""
    side = log_side_factory("--keys", keys)
    node = front(node_factory, side, "n1", "--keys", keys, "--request-timeout", "30")
    assert node.call({"type": "wal_append", "payload": "a"}, dest="n1")["offset"] == 0
    writer = side.pid_of("writer")
    os.kill(writer, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        held = node.call({"type": "wal_append", "payload": "b"}, timeout=20, dest="n1")
        waited = time.monotonic() - t0
        assert held["code"] == 13 and "connection dropped" in held["text"], held
        assert waited < 10, f"noticed only after {waited:.1f} s"
        assert (
            node.call({"type": "wal_append", "payload": "c"}, timeout=20, dest="n1")["code"] == 11
        )
    finally:
        os.kill(writer, signal.SIGCONT)
    assert wait_for_ack(node)


def wait_for_ack(node: Node, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.call({"type": "wal_append", "payload": "d"}, timeout=15, dest="n1")["type"] == (
            "wal_append_ok"
        ):
            return True
    return False
