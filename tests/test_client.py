"""The public client, `from walnode import Client`, against a real walnode.

The first-use example (append, read, append_async, kv_get, scan, info) runs
on a fresh data directory: offsets dense, kv_get right, a read past the end
raises code 20. Errors are one
exception type with the protocol's code, text and definiteness; a timeout
is an error too (a real one: the writer stopped with SIGSTOP); a walnode
killed under requests fails them with 13; the context manager reaps the
tree.
"""

from __future__ import annotations

import os
import resource
import signal

import pytest

from actors.codes import Code
from actors.procfs import pid_alive
from tests.nodeproc import wait_until
from walnode import Appended, Client, WalnodeError, WalnodeExited


def test_client_serves_a_process_with_fds_past_1024(tmp_path):
    """The client waits on its pipes with poll: select() refuses an fd past
    1024, and its reader thread died on that (the first call then failed as
    "walnode closed its stdout")."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
        pytest.skip("needs a soft limit of at least 1200 open files")
    held = [os.open(os.devnull, os.O_RDONLY)]
    try:
        while held[-1] < 1100:  # each takes the lowest free fd: all below are taken
            held.append(os.open(os.devnull, os.O_RDONLY))
        with Client.spawn(data_dir=tmp_path / "data") as c:
            assert c.proc.stdout is not None and c.proc.stdout.fileno() > 1024
            assert c.append("x").offset == 0
            assert c.read(0).payload == "x"
    finally:
        for fd in held:
            os.close(fd)


def test_first_use_on_a_fresh_directory(tmp_path):
    with Client.spawn(data_dir=tmp_path / "data") as c:
        a = c.append("set x=1")
        assert isinstance(a, Appended) and a.offset == 0 and a.length == 7
        assert len(a.checksum) == 8 and int(a.checksum, 16) >= 0
        entry = c.read(a.offset)
        assert entry.payload == "set x=1" and entry.checksum_valid is True
        futs = [c.append_async(f"set k{i}={i}") for i in range(1000)]
        assert [f.result().offset for f in futs] == list(range(1, 1001))  # dense, in order
        got = c.kv_get("x")
        assert (got.key, got.value) == ("x", "1") and got.applied_offset >= 1
        assert c.kv_get("k999").value == "999"
        scan = c.scan(0, 100)
        assert [e.offset for e in scan.entries] == list(range(100)) and scan.next_offset == 100
        assert scan.entries[5].payload == "set k4=4"
        info = c.info()
        assert (info.first_offset, info.next_offset, info.entries) == (0, 1001, 1001)
        assert info.fsynced and info.fsync_policy == "always"
        assert c.sync() == 1001
        snap = c.snapshot()
        assert snap.snapshot_offset == 1001 and snap.snapshot_size_bytes > 0
        done = c.compact(500)
        assert (done.snapshot_offset, done.entries_before, done.entries_after) == (500, 1001, 501)
        assert done.bytes_freed > 0
        with pytest.raises(WalnodeError) as err:
            c.read(1001)  # past the end
        assert err.value.code == Code.KEY_DOES_NOT_EXIST and err.value.definite
        assert "not written yet" in err.value.text
        assert err.value.reply["first_offset"] == 500 and err.value.reply["next_offset"] == 1001
        with pytest.raises(WalnodeError) as err:
            c.read(3)  # compacted away
        assert err.value.code == Code.KEY_DOES_NOT_EXIST
        status = c.status()
        assert set(status.pids()) == {"supervisor", "writer", "compactor", "front"}
        assert status.node_id == "n1" and status.pids()["supervisor"] == c.pid


def test_error_replies_raise_one_type_with_code_text_and_definite(tmp_path):
    with Client.spawn(data_dir=tmp_path / "data") as c:
        with pytest.raises(WalnodeError) as err:
            c.kv_get("missing")
        assert err.value.code == Code.KEY_DOES_NOT_EXIST and err.value.definite
        assert "missing" in err.value.text
        with pytest.raises(WalnodeError) as err:
            c.compact(1)  # no snapshot covers it
        assert err.value.code == Code.PRECONDITION_FAILED and err.value.definite
        with pytest.raises(WalnodeError) as err:
            c.call({"type": "no_such_type"})
        assert err.value.code == Code.NOT_SUPPORTED
        with pytest.raises(WalnodeError) as err:
            c.segment_config(1)
        assert err.value.code == Code.MALFORMED_REQUEST and "64" in err.value.text
        assert c.request({"type": "no_such_type"})["code"] == Code.NOT_SUPPORTED  # raw: no raise


def test_a_timeout_is_an_error_and_indefinite(tmp_path):
    with Client.spawn(data_dir=tmp_path / "data", timeout=5) as c:
        writer = c.status().process("writer").pid
        os.kill(writer, signal.SIGSTOP)  # it holds the append and answers nothing
        try:
            with pytest.raises(WalnodeError) as err:
                c.append("set t=1", timeout=0.5)
        finally:
            os.kill(writer, signal.SIGCONT)
        assert err.value.code == Code.TIMEOUT and not err.value.definite
        assert "0.5 s" in err.value.text and err.value.reply is None
        assert c.append("set t=2").offset >= 0  # the client goes on


def test_a_killed_walnode_fails_what_is_in_flight_and_the_tree_is_reaped(tmp_path):
    c = Client.spawn(data_dir=tmp_path / "data")
    pids = c.status().pids()
    os.kill(pids["writer"], signal.SIGSTOP)  # appends wait in the writer
    futs = [c.append_async(f"set a={i}") for i in range(10)]
    c.kill()
    for fut in futs:
        with pytest.raises(WalnodeError) as err:
            fut.result(10)
        assert err.value.code == Code.CRASH and not err.value.definite
    assert c.proc.poll() is not None  # reaped
    for pid in pids.values():
        assert wait_until(lambda p=pid: not pid_alive(p), timeout=5), pid


def test_the_context_manager_ends_walnode_cleanly(tmp_path):
    with Client.spawn(data_dir=tmp_path / "data", args=["--fsync", "never"]) as c:
        assert c.info().fsync_policy == "never"
        assert c.append("set y=2").offset == 0
        assert c.sync() == 1
        pids = c.status().pids()
    assert c.proc.returncode == 0  # end of input: a clean exit
    for pid in pids.values():
        assert not pid_alive(pid), pid
    with Client.spawn(data_dir=tmp_path / "data") as again:  # the same directory, reopened
        assert again.read(0).payload == "set y=2"
        assert again.info().fsync_policy == "always"


def test_a_walnode_that_exits_at_start_is_a_definite_error_with_its_reason(tmp_path):
    """A bad flag or a locked directory: walnode exits 2 before init; spawn
    raised 13 ("may or may not have happened", "exit status None") without
    walnode's message. Now: 11, definite, the exit status and the log's end."""
    with pytest.raises(WalnodeExited) as err:
        Client.spawn(data_dir=tmp_path / "a", args=["--max-segment-bytes", "10"])
    assert err.value.code == Code.TEMPORARILY_UNAVAILABLE and err.value.definite
    assert err.value.exit_status == 2 and err.value.reply is None
    assert "argument --max-segment-bytes: must be between 64 and 1073741824" in err.value.text
    with Client.spawn(data_dir=tmp_path / "b") as holder:
        with pytest.raises(WalnodeExited) as err:
            Client.spawn(data_dir=tmp_path / "b")
        assert err.value.exit_status == 2 and err.value.definite
        assert f"is in use by walnode supervisor pid {holder.pid}" in err.value.stderr_tail
        assert holder.append("still served").offset == 0


def test_a_payload_with_a_lone_surrogate_is_error_12_and_nothing_is_sent(tmp_path):
    with Client.spawn(data_dir=tmp_path / "data") as c:
        for call in (lambda: c.append("a\ud800"), lambda: c.append_async("\udfff")):
            with pytest.raises(WalnodeError) as err:
                call()
            assert err.value.code == Code.MALFORMED_REQUEST and err.value.definite
            assert "payload is not valid UTF-8 text: it holds a lone surrogate" in err.value.text
        assert c.append("after").offset == 0  # nothing reached walnode
        assert c.info().entries == 1 and c.unmatched == []
