"""What a process imports at start: every walnode process imports its role's
modules before it serves (~0.1 s of CPU each, five processes a node), so
modules only some deployments need are imported where they are used: asyncio
(zmq.auth.thread, zmq.utils.monitor: CURVE and remote peers), etcd's
client with urllib (a cluster's front) and the replication protocol (a
replica needs both)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.nodeproc import REPO

ONLY_WHERE_USED = (
    "asyncio",
    "urllib.request",
    "http.client",
    "actors.leader",
    "wal.replication.protocol",
)


@pytest.mark.parametrize(
    "module", ["actors.front", "actors.writer", "actors.compactor", "supervisor", "node"]
)
def test_a_role_imports_no_module_only_some_deployments_need(module):
    code = (
        f"import sys; import {module}; "
        f"print(sorted(m for m in {ONLY_WHERE_USED!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
