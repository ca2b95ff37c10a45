"""walnode's first moments (actors/startup.py): fds 0, 1 and 2 must be open,
and a stop signal before the processes start stops walnode cleanly.

A closed stdout (`walnode >&-`) would be reused by the next file walnode
opens (the LOCK file, zmq's eventfd) and replies would go there: walnode
exits 2 at once instead, saying which fd is closed, having created nothing.
A SIGTERM in the ~150 ms before the supervisor's loop runs (imports, the run
directory, the lock) used to kill it (exit 143), leaving the run directory
behind: now it is recorded and walnode exits 0, removing the run directory.

The signal tests send SIGTERM at moments the test can see in /proc rather
than after a fixed delay (which, on a loaded machine, may land before the
interpreter has run one line of walnode): as soon as walnode catches SIGTERM,
while it imports zmq (libzmq is mapped), and once its run directory exists.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from actors.codes import Exit
from tests.nodeproc import NODE, REPO


def start_in_shell(tmp_path, redirect: str) -> subprocess.CompletedProcess:
    """walnode run by sh with `redirect` applied (e.g. `>&-`), stdin a file of requests."""
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(
        b'{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1"}}\n'
    )
    command = f'exec "$0" "$@" < {requests} > {tmp_path / "stdout"} 2> {tmp_path / "stderr"} '
    return subprocess.run(
        ["sh", "-c", command + redirect, sys.executable, NODE, f"--data-dir={tmp_path / 'data'}"],
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout=30,
    )


@pytest.mark.parametrize(
    "redirect, named",
    [
        (">&-", "stdout (fd 1) is closed"),
        ("<&-", "stdin (fd 0) is closed"),
        ("<&- >&-", "stdin (fd 0) and stdout (fd 1) are closed"),
        ("2>&-", None),  # nowhere to say it: the status alone
    ],
)
def test_a_closed_stdio_fd_stops_walnode_at_start(tmp_path, redirect, named):
    done = start_in_shell(tmp_path, redirect)
    stderr = (tmp_path / "stderr").read_text()
    assert done.returncode == Exit.USAGE, stderr
    if named is None:
        assert stderr == ""
    else:
        assert stderr.startswith(f"walnode: {named}: "), stderr
        assert "Traceback" not in stderr
    assert not (tmp_path / "data").exists(), "walnode went on and took the data directory"
    assert not glob.glob(str(tmp_path / "walnode-run-*")), "walnode created a run directory"
    if ">&-" not in redirect:
        assert (tmp_path / "stdout").read_bytes() == b""


def catches_sigterm(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        caught = next(line for line in f if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def maps_libzmq(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return "libzmq" in f.read()


def has_run_dir(tmp_dir: str) -> bool:
    return bool(glob.glob(os.path.join(tmp_dir, "walnode-run-*")))


MOMENTS = {
    "it catches SIGTERM": lambda pid, tmp_dir: catches_sigterm(pid),
    "it imports zmq": lambda pid, tmp_dir: maps_libzmq(pid),
    "its run directory exists": lambda pid, tmp_dir: has_run_dir(tmp_dir),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
@pytest.mark.parametrize("attempt", [1, 2])
def test_sigterm_before_the_processes_start_stops_cleanly(tmp_path, moment, attempt):
    tmp_dir = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, NODE, f"--data-dir={tmp_path / 'data'}"],
        stdin=subprocess.PIPE,  # open, nothing written: nothing is read
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stderr", "wb"),  # noqa: SIM115 (closed with the process)
        cwd=REPO,
        env={**os.environ, "TMPDIR": tmp_dir},
    )
    try:
        reached = MOMENTS[moment]
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if reached(proc.pid, tmp_dir):
                    break
            except (FileNotFoundError, ProcessLookupError, StopIteration):
                pass  # /proc of a process just exec'ing, or gone
            time.sleep(0.0005)
        else:
            raise AssertionError(f"walnode never got to where {moment}")
        proc.send_signal(signal.SIGTERM)
        sent_at = time.monotonic()
        code = proc.wait(20)
        took = time.monotonic() - sent_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdin.close()
        proc.stdout.close()
    stderr = (tmp_path / "stderr").read_text()
    assert code == Exit.OK, f"exit {code}; stderr:\n{stderr[-3000:]}"
    assert took < 10, took
    assert "Traceback" not in stderr, stderr
    assert not has_run_dir(tmp_dir), "the run directory was left behind"
    if moment != "its run directory exists":  # else the writer may have started
        assert "SIGTERM came before any process started" in stderr, stderr


def test_a_temp_directory_too_deep_for_socket_paths_still_serves(tmp_path):
    # the run directory's ipc sockets must fit sun_path (107 bytes): under a deep TMPDIR
    # (pytest-xdist's workers make one) the supervisor died binding its socket with a traceback
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    requests = b'{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1"}}\n'
    res = subprocess.run(
        [sys.executable, NODE, f"--data-dir={tmp_path / 'data'}"],
        input=requests,
        capture_output=True,
        env={**os.environ, "TMPDIR": str(deep)},
        timeout=30,
    )
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert b'"type": "init_ok"' in res.stdout
