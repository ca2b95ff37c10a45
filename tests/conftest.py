from __future__ import annotations

import os

import pytest

from tests.nodeproc import Node


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
