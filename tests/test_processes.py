"""The process tree: one walnode per directory, restarts, no orphans, clean exit."""

from __future__ import annotations

import json
import os
import signal
import time

from actors import procfs
from tests.nodeproc import pid_alive, wait_until


def spares(node) -> list[int]:  # noqa: ANN001
    """The supervisor's spare writers (actors/spare.py), by their command line (a
    promoted spare keeps it: the writer status names is not one)."""
    writer = node.pids()["writer"]
    children = procfs.children(node.pid).items()
    return [p for p, argv in children if "--spare-fd" in argv and p != writer]


def spare_of(node) -> int:  # noqa: ANN001
    """The one spare writer once every process is ready and it was started."""
    assert wait_until(lambda: len(spares(node)) == 1, timeout=10), procfs.children(node.pid)
    return spares(node)[0]


def open_paths(pid: int) -> list[str]:
    paths = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return paths


def test_second_walnode_on_a_directory_in_use_is_refused(node_factory, data_dir):
    first = node_factory("--data-dir", data_dir)
    first.init()
    second = node_factory("--data-dir", data_dir)
    second.send({"type": "init", "node_id": "n1", "node_ids": ["n1"]})
    assert second.proc.wait(10) != 0
    assert second.raw == []  # answered nothing
    assert f"walnode supervisor pid {first.pid}" in second.stderr_text()
    assert "in use" in second.stderr_text()
    # the first one is undisturbed
    assert first.call({"type": "wal_append", "payload": "mine"})["offset"] == 0


def test_runs_without_data_dir_never_share_entries(node_factory, tmp_path):
    a = node_factory()
    a.init()
    for i in range(3):
        a.call({"type": "wal_append", "payload": f"a{i}"})
    assert a.close() == 0
    b = node_factory()
    b.init()
    assert b.call({"type": "wal_info"})["entries"] == 0
    assert b.close() == 0
    dirs = [
        line.split("keeps its log in ")[1].strip()
        for n in (a, b)
        for line in n.stderr
        if "keeps its log in" in line
    ]
    assert len(dirs) == 2 and dirs[0] != dirs[1]
    assert all(d.startswith(str(tmp_path)) for d in dirs)


def test_stdin_eof_exits_0_after_every_reply(node_factory):
    node = node_factory()
    node.send({"type": "init", "node_id": "n1", "node_ids": ["n1"]}, src="c0")
    for i in range(500):
        node.send({"type": "wal_append", "payload": f"e{i}"})
    assert node.close() == 0
    replies = [json.loads(line) for line in node.raw]
    assert len(replies) == 501
    assert [r["body"]["msg_id"] for r in replies] == list(range(501))
    offsets = sorted(r["body"]["offset"] for r in replies[1:])
    assert offsets == list(range(500))


def test_killing_the_supervisor_leaves_no_process_behind(node_factory):
    node = node_factory()
    node.init()
    pids = node.pids()
    assert set(pids) == {"supervisor", "writer", "compactor", "front"}
    assert pids["supervisor"] == node.pid
    spare = spare_of(node)
    os.kill(node.pid, signal.SIGKILL)
    node.proc.wait(5)
    for role in ("writer", "compactor", "front"):
        assert wait_until(lambda p=pids[role]: not pid_alive(p), timeout=5), role
    assert wait_until(lambda: not pid_alive(spare), timeout=5), "the spare writer"


def test_a_killed_writer_is_replaced_by_its_spare(node_factory, data_dir):
    """The restart promotes the spare writer started (and imported) ahead; until
    then it holds nothing of the data directory but the inherited lock fd. A new
    spare follows, and a stop leaves none behind."""
    node = node_factory("--data-dir", data_dir)
    node.init()
    for i in range(20):
        node.call_ok({"type": "wal_append", "payload": f"w{i}"})
    writer = node.pids()["writer"]
    spare = spare_of(node)
    assert spare != writer
    opened = [p for p in open_paths(spare) if p.startswith(os.path.realpath(data_dir))]
    assert opened == [os.path.join(os.path.realpath(data_dir), "LOCK")], opened
    os.kill(writer, signal.SIGKILL)
    assert wait_until(lambda: node.restarted("writer", writer))
    assert node.pids()["writer"] == spare  # promoted, not a new interpreter
    assert node.call_ok({"type": "wal_append", "payload": "w20"})["offset"] == 20
    assert node.call_ok({"type": "wal_read", "offset": 19})["payload"] == "w19"
    assert any(p.endswith(".log") for p in open_paths(spare))  # it opened the log once promoted
    second = spare_of(node)
    assert second != spare
    assert node.close() == 0
    assert not pid_alive(second) and not procfs.children(node.pid)


def test_a_spare_that_dies_on_its_own_is_reaped_and_replaced(node_factory):
    """status names the spare; one killed while it waits is reaped at once (no
    zombie kept until the next restart), and another starts after SPARE_DELAY."""
    node = node_factory()
    node.init()
    spare = spare_of(node)
    assert node.process("writer")["spare_pid"] == spare
    os.kill(spare, signal.SIGKILL)
    assert wait_until(lambda: not os.path.exists(f"/proc/{spare}"), timeout=5), "not reaped"
    assert wait_until(lambda: node.process("writer")["spare_pid"] not in (None, spare), timeout=10)
    second = node.process("writer")["spare_pid"]
    assert spares(node) == [second]
    os.kill(node.pids()["writer"], signal.SIGKILL)  # the new spare is the one promoted
    assert wait_until(lambda: node.process("writer")["pid"] == second, timeout=10)
    assert node.call_ok({"type": "wal_append", "payload": "after"})["offset"] == 0
    assert node.close() == 0


def test_writer_restarts_and_keeps_every_entry(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir)
    node.init()
    for i in range(50):
        node.call({"type": "wal_append", "payload": f"w{i}"})
    writer = node.pids()["writer"]
    os.kill(writer, signal.SIGKILL)
    assert wait_until(lambda: node.restarted("writer", writer))
    status = node.status()
    procs = {p["role"]: p for p in status["processes"]}
    assert procs["writer"]["restarts"] == 1 and procs["front"]["restarts"] == 0
    assert status["last_recovery"]["role"] == "writer"
    assert status["last_recovery"]["entries_recovered"] == 50
    assert node.call({"type": "wal_append", "payload": "w50"})["offset"] == 50
    assert node.call({"type": "wal_read", "offset": 49})["payload"] == "w49"


def test_front_restarts_goes_on_reading_and_never_repeats_msg_ids(node_factory):
    node = node_factory()
    node.init()
    for i in range(10):
        node.call({"type": "wal_append", "payload": f"f{i}"})
    front = node.pids()["front"]
    os.kill(front, signal.SIGKILL)
    time.sleep(0.2)
    # the restarted front reads on from stdin, still knows the node id
    body = node.call({"type": "wal_append", "payload": "f10"})
    assert body["offset"] == 10
    procs = {p["role"]: p for p in node.status()["processes"]}
    assert procs["front"]["pid"] != front and procs["front"]["restarts"] == 1
    assert node.close() == 0
    ids = [json.loads(line)["body"]["msg_id"] for line in node.raw]
    assert len(ids) == len(set(ids)) and ids == sorted(ids)
    assert all(json.loads(line)["src"] == "n1" for line in node.raw)


def test_the_next_walnode_removes_run_directories_of_dead_supervisors(node_factory, tmp_path):
    """A supervisor killed with SIGKILL cannot remove its run directory (the
    sockets, the front's inbox); the next walnode to start does, and touches
    nothing else: not a live walnode's, not one walnode did not make."""
    live = node_factory()
    live.init()
    (live_run,) = {str(p) for p in tmp_path.glob("walnode-run-*")}
    dead = node_factory()
    dead.init()
    dead.call({"type": "wal_append", "payload": "x" * 1000})  # something in its inbox
    runs = {str(p) for p in tmp_path.glob("walnode-run-*")}
    (stale,) = runs - {live_run}
    os.kill(dead.pid, signal.SIGKILL)
    dead.proc.wait(5)
    left = runs - {str(p) for p in tmp_path.glob("walnode-run-*")}
    assert not left, "the killed supervisor removed its run directory itself?"
    foreign = tmp_path / "walnode-run-not-made-by-walnode"
    foreign.mkdir()
    (foreign / "supervisor.pid").write_text("not a pid\n")
    bare = tmp_path / "walnode-run-bare"
    bare.mkdir()

    after = node_factory()
    after.init()
    now = {str(p) for p in tmp_path.glob("walnode-run-*")}
    mine = now - runs - {str(foreign), str(bare)}
    assert len(mine) == 1, now  # the new one's own
    assert now == {*mine, str(foreign), str(bare), *(runs - {stale})}
    assert "removed" in after.stderr_text() and f"pid {dead.pid}" in after.stderr_text()
    assert live.call({"type": "wal_append", "payload": "still fine"})["offset"] == 0


def test_status_tells_a_stalled_writer_from_a_ready_one(node_factory):
    """The supervisor's heartbeat: a SIGSTOPped writer stops answering it,
    and status says "stalled" (with how long ago it was last seen) instead
    of "ready"; once it runs again, it is "ready" again."""
    node = node_factory()
    node.init()
    writer = node.process("writer")
    assert writer["state"] == "ready", writer
    os.kill(writer["pid"], signal.SIGSTOP)
    try:
        assert wait_until(lambda: node.process("writer")["state"] == "stalled", timeout=8)
        assert writer["last_seen_ms"] < 2000, writer  # before the stop
        stalled = node.process("writer")
        assert stalled["pid"] == writer["pid"] and stalled["last_seen_ms"] > 3000, stalled
        assert {p["role"]: p["state"] for p in node.status()["processes"]} == {
            "supervisor": "ready",
            "writer": "stalled",
            "compactor": "ready",
            "front": "ready",
        }
    finally:
        os.kill(writer["pid"], signal.SIGCONT)
    assert wait_until(lambda: node.process("writer")["state"] == "ready", timeout=5)
    assert node.process("writer")["last_seen_ms"] < 2000
    assert node.call({"type": "wal_append", "payload": "after"})["offset"] == 0


def test_a_stop_during_the_writers_recovery_is_prompt(node_factory):
    """A writer still recovering reads no STOP: it is stopped at once (it has
    served nothing), not after a 5 s wait and a 'did not stop' error."""
    node = node_factory(env={"WALNODE_FAULT_WRITER_START_DELAY": "30"})
    assert wait_until(lambda: "started writer" in node.stderr_text(), timeout=10)
    time.sleep(0.3)
    stop = time.monotonic()
    os.kill(node.pid, signal.SIGTERM)
    node.proc.wait(10)
    assert time.monotonic() - stop < 3, node.stderr_text()
    assert "did not stop" not in node.stderr_text()
    assert "stopping the writer during its start" in node.stderr_text()
