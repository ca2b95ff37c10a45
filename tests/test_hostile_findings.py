"""Reproducers of the hostile tester's findings (docs/FINDINGS.md): each fails on
the commit named in its docstring; a finding not fixed on this branch is
marked xfail(strict=True) with the branch and commit it fails on."""

from __future__ import annotations

import time

import pytest

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
