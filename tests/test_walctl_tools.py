"""walctl as a package: output into a closed pipe, and tools loaded only
when their command runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from actors import procfs
from tests.nodeproc import REPO, WALCTL, walctl
from wal import DataDir, Log

ENTRIES = 20_000  # ~1.6 MB of dump output: far more than a pipe holds


def make_log(path: str) -> None:
    datadir = DataDir(path)
    log, _ = Log.open(datadir.wal_dir)
    try:
        for i in range(ENTRIES):
            log.append(b"set k%d=%d" % (i, i))
        log.flush()
        log.sync()
    finally:
        log.close()


def test_dump_into_a_pipe_closed_after_one_line_prints_it_and_exits_0(tmp_path):
    """`walctl dump DIR | head -n 1`: one entry, exit 0, nothing on stderr."""
    data = os.fspath(tmp_path / "data")
    make_log(data)
    proc = subprocess.Popen(
        [*WALCTL, "dump", data], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        first = proc.stdout.readline()
        proc.stdout.close()  # what head does after its line
        rc = proc.wait(30)
        stderr = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert json.loads(first)["offset"] == 0
    assert json.loads(first)["payload"] == "set k0=0"
    assert rc == 0, stderr
    assert stderr == ""


def in_shell(command: str) -> subprocess.CompletedProcess:
    """`command` run by bash, where $WALCTL is this checkout's walctl."""
    return subprocess.run(
        ["bash", "-c", command],
        env={**os.environ, "WALCTL": " ".join(WALCTL)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_dump_through_head_in_a_shell(tmp_path):
    data = os.fspath(tmp_path / "data")
    make_log(data)
    run = in_shell(f"set -o pipefail; $WALCTL dump {data} | head -n 1")
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 1 and run.stderr == ""


def test_dump_with_stdout_closed_exits_2_saying_so(tmp_path):
    """`walctl dump DIR >&-` ended in AttributeError ('NoneType' has no
    attribute 'write'), exit 1."""
    data = os.fspath(tmp_path / "data")
    make_log(data)
    run = in_shell(f"$WALCTL dump {data} >&-")
    assert run.returncode == 2, run.stderr
    assert run.stderr == "walctl dump: stdout is closed; run it with stdout open\n"


def test_dump_from_a_negative_or_non_ascii_offset_exits_2(tmp_path):
    data = os.fspath(tmp_path / "data")
    make_log(data)
    for offset in ["-5", "\u0661"]:  # -5 was accepted silently, Arabic-Indic 1 read as 1
        run = in_shell(f"$WALCTL dump {data} --from {offset}")
        assert run.returncode == 2 and run.stdout == "", (offset, run.stdout[:200])
        assert f"argument --from: must be an offset, an integer >= 0, got {offset!r}" in run.stderr


def test_offline_commands_do_not_load_the_tools():
    """walctl info/dump/verify need neither crashtest nor bench (nor tqdm,
    matplotlib): those load only when their command runs."""
    code = (
        "import sys; import walctl.cli as cli; "
        "cli.main(['verify', '/nonexistent-walnode-dir']); "
        "print(sorted(m for m in sys.modules if m.startswith(('walctl.', 'tqdm', 'matplotlib'))))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert run.stdout.strip() == "['walctl.cli']", run.stdout + run.stderr


def test_crashtest_without_tqdm_says_what_to_install():
    """tqdm is optional (extra `tools`): without it the progress bar is
    refused with what to do, not a traceback."""
    code = (
        "import sys; sys.modules['tqdm'] = None; "  # import tqdm fails, as if not installed
        "from walctl.cli import main; sys.exit(main(['crashtest', '--kills', '1']))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 2, run.stderr
    assert "pip install 'walnode[tools]'" in run.stderr and "--no-progress" in run.stderr
    assert "Traceback" not in run.stderr


def processes_naming(path: str) -> list[int]:
    """Pids of live processes with an argument that names `path`."""
    found = []
    for name in os.listdir("/proc"):
        argv = procfs.cmdline(int(name)) if name.isdigit() else None
        if argv is not None and any(path in arg for arg in argv):
            found.append(int(name))
    return found


@pytest.mark.timeout(90)
def test_a_campaign_cut_short_by_its_timeout_leaves_no_process(tmp_path):
    # walctl crashtest --cluster starts etcd and three replicas in sessions of their own;
    # tests/nodeproc.walctl's timeout used to SIGKILL walctl alone and orphan them (seen:
    # three replicas still running 55 minutes after a campaign test timed out under load)
    root = os.fspath(tmp_path / "campaign")
    with pytest.raises(subprocess.TimeoutExpired):
        walctl(
            "crashtest", "--cluster", "--leader-kills", "20", "--interval", "1",
            "--no-progress", "--data-dir", root, timeout=12,
        )  # fmt: skip
    left = processes_naming(root)
    for pid in left:  # reaped by nobody else: do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"walctl's timeout left {len(left)} processes of its campaign running"
