from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from tests.nodeproc import Node


def pytest_configure(config: pytest.Config) -> None:
    """A short base for tmp_path: a walnode run directory goes inside a test's TMPDIR (tests
    look for it there), and its socket paths must fit 107 bytes; pytest-xdist's per-worker
    directories (make test runs three) made /tmp/pytest-of-USER/pytest-N/popen-gwK/TEST/ too
    long, and walnode then puts run directories in /tmp. The controller makes it and removes
    it at the end; the workers get their own directories under it."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="wt-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_BASETEMP, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


_OWN_BASETEMP = pytest.StashKey[str]()


@pytest.fixture
def node_factory(tmp_path, monkeypatch):
    """Start walnode trees; every one is killed (by pid) and reaped at the end."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # runs without --data-dir land here
    started: list[Node] = []

    def start(*args: str, env: dict | None = None, preexec_fn=None) -> Node:  # noqa: ANN001
        node = Node(*args, env=env, preexec_fn=preexec_fn)
        started.append(node)
        return node

    yield start
    for node in started:
        node.kill()


@pytest.fixture
def data_dir(tmp_path) -> str:
    path = tmp_path / "data"
    return os.fspath(path)


@pytest.fixture
def etcd_server(tmp_path):
    """A real single-member etcd (tests/etcd.py), killed with its process group at the end."""
    from walctl.etcdproc import EtcdServer

    server = EtcdServer(os.fspath(tmp_path / "etcd"))
    os.makedirs(server.data_dir)
    server.start()
    yield server
    server.stop()
