"""The demo across hosts (docs/DEPLOY.md): `scripts/netns_demo.py` end to end.

It needs root and network namespaces; where it cannot make them the test
is skipped with the demo's own reason (`netns_demo.py --check`). The demo
cleans up after itself; if it is stopped here (a timeout), this test still
stops whatever it left, by pid, and deletes its namespaces by name.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from tests.nodeproc import REPO

DEMO = os.path.join(REPO, "scripts", "netns_demo.py")


def can_run() -> str | None:
    """None if the demo can run here, else why not."""
    if os.geteuid() != 0:
        return "not root: network namespaces need root"
    try:
        probe = subprocess.run(
            [sys.executable, DEMO, "--check"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as err:
        return f"netns_demo.py --check did not run: {err}"
    if probe.returncode != 0:
        return (probe.stdout + probe.stderr).strip() or f"--check exited {probe.returncode}"
    return None


def remove_leftovers(prefix: str) -> list[str]:
    """Stop the processes inside, and delete, the namespaces a demo run left (prefix*)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    names = [
        line.split()[0]
        for line in listing.stdout.splitlines()
        if line.split() and line.split()[0].startswith(prefix)
    ]
    for name in names:
        pids = subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10
        ).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return names


def run_demo(argv: list[str], tmp_path, timeout: float, tag: str) -> tuple[int, str, list[str]]:  # noqa: ANN001
    """Run a demo script; its exit status, its output, and the namespaces it left (removed)."""
    proc = subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    out = ""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the demo stops its processes and namespaces
            try:
                out += proc.communicate(timeout=10)[0]
            except subprocess.TimeoutExpired:
                proc.kill()
                out += proc.communicate(timeout=5)[0]
        left = remove_leftovers(f"{tag}{proc.pid}-")
    return proc.returncode, out, left


@pytest.mark.timeout(60, method="signal")
def test_netns_demo_end_to_end(tmp_path):
    reason = can_run()
    if reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    returncode, out, left = run_demo([DEMO, "--appends", "100"], tmp_path, 45, "wn")
    assert returncode == 0, out
    assert not left, f"the demo left namespaces behind: {left}\n{out}"
    assert "RESULT: PASS" in out, out
    assert "FAIL" not in out, out
    for node in ("n1", "n2"):
        assert re.search(rf"{node} init_ok \(node_ids \['n1', 'n2'\]\)", out), out
        assert re.search(rf"{node}: the first append sent after the kill is acknowledged", out)
    assert re.search(r"kill -9 writer pid \d+", out), out
    assert re.search(r"ok    the log-side supervisor restarted the writer", out), out
    assert re.search(r"ok    the log's offsets are dense: 0\.\.\d+", out), out
    assert "ok    n1 reads n2's entries" in out and "ok    n2 reads n1's entries" in out, out
    assert "ok    walctl verify" in out, out


CLUSTER_DEMO = os.path.join(REPO, "scripts", "netns_cluster_demo.py")


@pytest.mark.timeout(90, method="signal")
def test_netns_cluster_demo_loses_the_leaders_host(tmp_path):
    """Three replicas, etcd and a front in namespaces; the leader's host loses its link."""
    reason = can_run()
    if reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    argv = [CLUSTER_DEMO, "--seconds", "1.5"]
    returncode, out, left = run_demo(argv, tmp_path, 75, "wc")
    assert returncode == 0, out
    assert not left, f"the demo left namespaces behind: {left}\n{out}"
    assert "RESULT: PASS" in out and "FAIL" not in out, out
    lost = re.search(r"(r\d)'s host is lost \(eth0 down\)", out)
    new = re.search(r"the leader is now (r\d)", out)
    assert lost and new and lost.group(1) != new.group(1), out
    assert "ok    back within lease TTL + 3 s" in out, out
    assert "ok    walctl dump: every acknowledged append on all three replicas" in out, out
