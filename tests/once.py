"""Build something once for the whole run, whichever xdist worker asks first.

`make test` runs the suite with `--dist worksteal`, which can split a module's tests between
workers, and a module-scoped fixture then runs once on each: a crashtest campaign or a wheel
built and installed, seconds of CPU on a 2-core machine. `once_per_run` puts the result in the
run's shared temp directory (the controller's basetemp, the parent of each worker's; removed at
the end of the run, tests/conftest.py) under an flock: the first worker builds it, the others
wait for it and read it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.getbasetemp()
    # an xdist worker's basetemp is <the run's basetemp>/popen-gwN
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def once_per_run(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], dict]
) -> dict:
    """`build(directory)`'s result (JSON), built in `directory` by the first caller of the run.
    A build that raises leaves nothing behind: the next caller builds again (and fails alike)."""
    root = shared_root(tmp_path_factory)
    directory = root / name
    done = root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if done.exists():
            return json.loads(done.read_text())
        if directory.exists():  # a build that failed part-way
            shutil.rmtree(directory)
        directory.mkdir()
        result = build(directory)
        done.write_text(json.dumps(result))
        return result
