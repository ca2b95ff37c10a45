"""Reproducers of the hostile tester's findings (docs/FINDINGS.md): each fails on
the commit named in its docstring; a finding not fixed on this branch is
marked xfail(strict=True) with the branch and commit it fails on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.nodeproc import NODE
from walctl import crashtest
from walctl.crashtest import Node
from walnode import node_command


@pytest.mark.timeout(60)
def test_crashtest_call_returns_a_reply_whose_callback_runs_late(tmp_path, monkeypatch):
    """walctl crashtest's Node.call read the Waiter as soon as the future woke
    its waiters, but a Future runs its done callbacks (Waiter.done, which sets
    `body`) only after that, in the reader thread: a reader preempted between
    the two made a reply that came read as None. The power-loss campaign then
    counted every entry past a `wal_scan` that 'got None' as lost (main
    761ee77 under load: 'wal_scan from 1032: None', 1750 acknowledged appends
    'lost', FAIL, with the log intact). The callback is delayed here as a
    busy machine delays the reader; fails on main 761ee77 (the call returns
    None) and was fixed in walctl/crashtest.py on branch tester."""
    real_done = crashtest.Waiter.done

    def late_done(self, future):  # noqa: ANN001
        time.sleep(0.2)  # the reader thread, preempted after waking the caller
        real_done(self, future)

    monkeypatch.setattr(crashtest.Waiter, "done", late_done)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    node = Node([*node_command(), "--data-dir", str(tmp_path / "data")], lambda *_: None)
    try:
        reply = node.call({"type": "init", "node_id": "n1", "node_ids": ["n1"]}, timeout=30)
        assert reply is not None and reply["type"] == "init_ok", reply
        info = node.call({"type": "wal_info"}, timeout=10)
        assert info is not None and info["type"] == "wal_info_ok", info
    finally:
        node.kill()


def _state_store_files(data_dir: str) -> list[str]:
    """Every file under DIR/state: a branch's on-disk state store (main keeps none)."""
    found = []
    for root, _, names in os.walk(os.path.join(data_dir, "state")):
        found += [os.path.join(root, n) for n in names]
    return found


@pytest.mark.timeout(120)
def test_rot_in_a_state_store_never_changes_a_kv_get_answer(node_factory, data_dir):
    """T1 (branch statestore 6593f18, docs/FINDINGS.md): sqlite pages carry no
    checksum, so one byte of rot in a value in DIR/state/state.sqlite (log and
    snapshots intact) was served: kv_get key7 answered kv_get_ok 'value-000459'
    where 'value-000457' was acknowledged. Any answer but the acknowledged value
    or an error is wrong. On main (no store) nothing is rotted and the value
    comes back."""
    node = node_factory("--data-dir", data_dir)
    node.init()
    ids = [
        node.send({"type": "wal_append", "payload": f"set key{i % 50}=value-{i:06d}"})
        for i in range(500)
    ]
    for msg_id in ids:
        assert node.reply_to(msg_id, 30)["body"]["type"] == "wal_append_ok"
    assert node.close() == 0
    for path in _state_store_files(data_dir):
        with open(path, "r+b") as f:
            data = f.read()
            at = data.find(b"value-000457")
            if at >= 0:
                f.seek(at + 11)
                f.write(b"9")  # value-000457 -> value-000459: a bit flip sqlite cannot see
    node = node_factory("--data-dir", data_dir)
    node.init()
    reply = node.call({"type": "kv_get", "key": "key7"}, timeout=30)
    assert reply.get("value") in (None, "value-000457"), reply


@pytest.mark.timeout(120)
def test_children_do_not_import_actors_from_the_working_directory(tmp_path):
    """F2 (main ce060ef): the supervisor starts each role as `python -m
    actors.<role>`, and `-m` puts the working directory first on sys.path, so a
    walnode started from a directory holding an `actors/` package (another
    checkout, a project of the user's) ran that code as its writer, compactor
    and front, silently. Here such a package only leaves a mark and refuses to
    import: the node must still answer init and no mark may appear."""
    elsewhere = tmp_path / "cwd"
    (elsewhere / "actors").mkdir(parents=True)
    mark = tmp_path / "imported-from-cwd"
    (elsewhere / "actors" / "__init__.py").write_text(
        f"open({os.fspath(mark)!r}, 'w').close()\nraise ImportError('not walnode')\n"
    )
    env = {**os.environ, "TMPDIR": os.fspath(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, NODE, "--data-dir", os.fspath(tmp_path / "data")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=elsewhere,
        env=env,
        start_new_session=True,
    )
    init = b'{"src": "c", "dest": "n1", "body": {"type": "init", "msg_id": 1, "node_id": "n1"}}\n'
    try:
        out, _ = proc.communicate(init, timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    assert b'"init_ok"' in out, out[-500:]
    assert not mark.exists(), "a child imported actors/ from walnode's working directory"
