"""A plain, non-editable install runs anywhere.

The test builds a wheel from a copy of the tracked tree, installs it into
a fresh venv (python -m venv, then pip with the local wheel; walnode's
dependencies come from pip's usual index and cache), and checks that:

- the installed top-level names are walnode's own packages (no bench,
  crashtest, supervisor, node, tests), and no installed module imports `tests`;
- the installed `walnode` command, run from a directory that is not the
  repository, answers a scripted session (init, append, read, info) and
  exits 0 at end of input; `walctl info` reads what it wrote;
- the installed client, `from walnode import Client`, finds the installed
  walnode on its own.

It takes ~10 s (a wheel build, a venv, one pip install) and is marked
`install`, which `make test` runs like any other test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.nodeproc import REPO
from tests.once import once_per_run

OWN_TOP_LEVEL = {"walnode", "walnode_entry", "wal", "actors", "walctl"}
SESSION = [
    {"type": "init", "msg_id": 1, "node_id": "n1", "node_ids": ["n1"]},
    {"type": "wal_append", "msg_id": 2, "payload": "set x=42"},
    {"type": "wal_read", "msg_id": 3, "offset": 0},
    {"type": "wal_info", "msg_id": 4},
]
IMPORTS_TESTS = re.compile(r"^\s*(from tests[. ]|import tests\b)", re.MULTILINE)


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done


def copy_tracked_tree(dest: str) -> None:
    """What a clone holds: the tracked files (and new, unignored ones)."""
    files = run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO).stdout.split()
    archive = os.path.join(dest, "..", "src.tar")
    with tarfile.open(archive, "w") as tar:
        for name in files:
            if os.path.isfile(os.path.join(REPO, name)):
                tar.add(os.path.join(REPO, name), arcname=name)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> dict[str, str]:
    """The wheel built and installed once for the whole run (tests/once.py: under worksteal
    this module's tests can land on two workers)."""
    return once_per_run(tmp_path_factory, "install", build_and_install)


def build_and_install(root: Path) -> dict[str, str]:
    src, wheels, env_dir = (os.fspath(root / n) for n in ("src", "wheels", "venv"))
    os.makedirs(src)
    copy_tracked_tree(src)
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "wheel", "--no-deps", "--quiet", "--wheel-dir", wheels, src])
    (wheel,) = os.listdir(wheels)
    run([sys.executable, "-m", "venv", "--without-pip", env_dir])
    python = os.path.join(env_dir, "bin", "python")
    run([*pip, "--python", python, "install", "--quiet", os.path.join(wheels, wheel)])
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    return {"bin": os.path.join(env_dir, "bin"), "site": site.stdout.strip(), "root": str(root)}


def installed_files(site: str) -> list[str]:
    """Every path the walnode distribution installed (its RECORD), relative to site-packages."""
    (info,) = [d for d in os.listdir(site) if d.startswith("walnode-") and d.endswith(".dist-info")]
    with open(os.path.join(site, info, "RECORD")) as f:
        return [line.split(",")[0] for line in f if line.strip()]


@pytest.mark.install
@pytest.mark.timeout(180)
def test_installed_top_level_names_are_walnodes_own(venv):
    files = installed_files(venv["site"])
    top = set()
    for path in files:
        if path.startswith("..") or ".dist-info/" in path:
            continue  # the scripts in bin/, the distribution's metadata
        head, _, rest = path.partition("/")
        # a top-level module's bytecode: __pycache__/node.cpython-311.pyc counts as node.py
        top.add(rest.split(".")[0] + ".py" if head == "__pycache__" else head)
    assert top == OWN_TOP_LEVEL, top
    for name in files:
        if name.endswith(".py") and not name.startswith(".."):
            with open(os.path.join(venv["site"], name)) as f:
                assert not IMPORTS_TESTS.search(f.read()), f"{name} imports tests"


def installed_session(venv: dict[str, str], cwd: str, data: str, env: dict) -> dict[int, dict]:
    """SESSION through the installed `walnode`; its replies by in_reply_to."""
    lines = "".join(json.dumps({"src": "c1", "dest": "n1", "body": b}) + "\n" for b in SESSION)
    done = subprocess.run(
        [os.path.join(venv["bin"], "walnode"), "--data-dir", data],
        input=lines,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return {
        json.loads(ln)["body"]["in_reply_to"]: json.loads(ln)["body"]
        for ln in done.stdout.splitlines()
    }


def plain_env(venv: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = venv["bin"] + os.pathsep + env.get("PATH", "")
    return env


@pytest.mark.install
@pytest.mark.timeout(180)
def test_the_installed_walnode_answers_a_session_from_another_directory(venv, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = os.fspath(tmp_path / "data")
    env = plain_env(venv)
    replies = installed_session(venv, os.fspath(elsewhere), data, env)
    assert replies[1]["type"] == "init_ok"
    assert (replies[2]["type"], replies[2]["offset"], replies[2]["length"]) == (
        "wal_append_ok",
        0,
        8,
    )
    assert replies[3]["payload"] == "set x=42" and replies[3]["checksum_valid"] is True
    assert replies[4]["next_offset"] == 1 and replies[4]["fsynced"] is True
    info = run([os.path.join(venv["bin"], "walctl"), "info", data], cwd=elsewhere, env=env)
    assert json.loads(info.stdout)["next_offset"] == 1
    script = (
        "from walnode import Client\n"
        f"with Client.spawn(data_dir={data!r}) as c:\n"
        "    print(c.read(0).payload, c.append('set y=1').offset)\n"
    )
    client = run([os.path.join(venv["bin"], "python"), "-c", script], cwd=elsewhere, env=env)
    assert client.stdout.split() == ["set", "x=42", "1"]


@pytest.mark.install
@pytest.mark.timeout(180)
def test_modules_named_supervisor_and_node_beside_it_change_nothing(venv, tmp_path):
    """Another distribution's top-level `supervisor` or `node` (PyPI has both)
    on the path ahead of walnode's: the installed walnode does not import them."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in ("supervisor.py", "node.py"):
        (foreign / name).write_text('raise ImportError("a foreign module, not walnode")\n')
    env = {**plain_env(venv), "PYTHONPATH": os.fspath(foreign)}
    replies = installed_session(venv, os.fspath(tmp_path), os.fspath(tmp_path / "data"), env)
    assert replies[1]["type"] == "init_ok" and replies[2]["offset"] == 0
