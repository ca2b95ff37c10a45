"""walctl crashtest: a short campaign through the real command, and a verdict
that fails when it should.

The campaign runs `python -m walctl crashtest` as a user would; crashtest
kills its own walnode's processes by pid and reaps the tree. Should the test
time out and kill walctl, the walnode it started sees end of input and exits.
"""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nodeproc import REPO, WALCTL
from tests.once import once_per_run
from walctl import cli as walctl
from walctl import crashtest

SEED = 27  # 12 random kills: writer 7, compactor 3, front 2
KILLS = 12

try:
    import matplotlib  # noqa: F401

    HAVE_MATPLOTLIB = True
except ImportError:
    HAVE_MATPLOTLIB = False


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> dict:
    """The campaign, run once for the whole run (tests/once.py: under worksteal this module's
    tests can land on two workers)."""
    result = once_per_run(tmp_path_factory, "crashtest-campaign", run_campaign)
    return {**result, "dir": Path(result["dir"])}


def run_campaign(out: Path) -> dict:
    argv = [*WALCTL, "crashtest", "--kills", str(KILLS), "--seed", str(SEED)]
    argv += ["--role", "random", "--in-flight", "64", "--interval", "0.3", "--no-progress"]
    argv += ["--max-back-to-service", "5", "--data-dir", str(out / "data")]
    argv += ["--json", str(out / "report.json"), "--node-log", str(out / "node.log")]
    if HAVE_MATPLOTLIB:
        argv += ["--png", str(out / "timeline.png")]
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"crashtest took over 60 s:\n{stdout}\n{stderr}")
    with open(out / "report.json") as f:
        report = json.load(f)
    rc = proc.returncode
    return {"rc": rc, "stdout": stdout, "stderr": stderr, "report": report, "dir": str(out)}


@pytest.mark.timeout(90)
def test_a_short_campaign_loses_and_duplicates_nothing(campaign):
    r = campaign["report"]
    assert campaign["rc"] == 0, campaign["stdout"] + campaign["stderr"]
    assert r["passed"] and r["failures"] == []
    v = r["verdict"]
    assert v["lost"] == 0 and v["duplicated"] == 0
    assert v["phantoms"] == v["misordered"] == v["state_mismatches"] == 0
    assert v["acknowledged"] > 1000
    assert v["verified_in_log"] + v["unchecked"] == v["acknowledged"]
    assert v["keys_checked"] > 0
    assert campaign["stdout"].rstrip().endswith("PASS")


@pytest.mark.timeout(90)
def test_every_kill_hits_the_drawn_role_and_the_service_comes_back(campaign):
    r = campaign["report"]
    drawn = collections.Counter(crashtest.draw_roles("random", KILLS, random.Random(SEED)))
    assert min(drawn[role] for role in crashtest.ROLES) >= 1  # the seed hits every role
    assert r["kills_per_role"] == dict(drawn)
    assert r["restarts_per_role"] == dict(drawn)  # nothing died that was not killed
    assert len(r["kills"]) == KILLS
    for k in r["kills"]:
        assert k["back_to_service_ms"] is not None and 0 < k["back_to_service_ms"] < 5000, k
        expected = "kv_get answered" if k["role"] == "compactor" else "wal_append_ok"
        assert k["measured_by"] == expected
    # a reply may go missing only with a front killed right after journaling it
    a = r["appends"]
    assert a["unanswered"] == a["unanswered_at_front_kill"]
    assert a["double_replies"] == 0
    assert r["node_exit_status"] == 0
    log = (campaign["dir"] / "node.log").read_text()
    assert log.count("crashtest: kill ") == 2 * KILLS  # each kill, and its way back


@pytest.mark.timeout(90)
@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib (walnode[chart]) is not installed")
def test_the_timeline_is_a_png(campaign):
    with open(campaign["dir"] / "timeline.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_png_without_matplotlib_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    assert walctl.main(["crashtest", "--png", "x.png"]) == 2
    assert "pip install 'walnode[chart]'" in capsys.readouterr().err


# -- the verifier, on fabricated histories ------------------------------------

N, KEYS = 8, 4


def clean_run() -> tuple[crashtest.Ledger, crashtest.History, dict[int, str | None]]:
    """Appends 0..7 acknowledged at offsets 0..7, all read back; the state agrees."""
    ledger, history = crashtest.Ledger(KEYS), crashtest.History(KEYS)
    for i in range(N):
        ledger.add()
        assert ledger.record(i, {"type": "wal_append_ok", "offset": i}, 0.0)
        history.entry(i, ledger.payload(i))
    kv = {k: str(max(i for i in range(N) if i % KEYS == k)) for k in range(KEYS)}
    return ledger, history, kv


def test_the_verifier_passes_a_clean_run():
    ledger, history, kv = clean_run()
    f = crashtest.verify(ledger, history, N, kv)
    assert (f.acknowledged, f.verified_in_log, f.keys_checked) == (N, N, KEYS)
    assert not (f.lost or f.duplicated or f.phantoms or f.misordered or f.state_mismatches)


def ack(ledger: crashtest.Ledger, offset: int) -> int:
    i = ledger.add()
    ledger.record(i, {"type": "wal_append_ok", "offset": offset}, 0.0)
    return i


def error(ledger: crashtest.Ledger, code: int) -> int:
    i = ledger.add()
    ledger.record(i, {"type": "error", "code": code}, 0.0)
    return i


def test_an_ack_past_the_log_end_is_lost():
    ledger, history, kv = clean_run()
    ack(ledger, N)  # acknowledged at offset 8; the log ends at 8
    f = crashtest.verify(ledger, history, N, kv)
    assert len(f.lost) == 1 and "the log ends at 8" in f.lost[0]


def test_an_ack_whose_offset_holds_another_payload_is_lost_and_duplicated():
    ledger, history, kv = clean_run()
    i = ack(ledger, 2)
    f = crashtest.verify(ledger, history, N, kv)
    assert f.lost == [f"request {i} acknowledged at 2; the log holds 2 there"]
    assert f.duplicated == [f"offset 2 acknowledged to requests 2 and {i}"]
    assert f.misordered  # a later request at an earlier offset


def test_a_payload_at_two_offsets_is_duplicated():
    ledger, history, kv = clean_run()
    history.entry(N, ledger.payload(5))
    f = crashtest.verify(ledger, history, N + 1, kv)
    assert f.duplicated == ["request 5 is in the log at offsets 5 and 8"]


def test_a_refused_append_in_the_log_is_a_phantom():
    ledger, history, kv = clean_run()
    i = error(ledger, 11)
    history.entry(N, ledger.payload(i))
    kv[i % KEYS] = str(i)
    f = crashtest.verify(ledger, history, N + 1, kv)
    assert f.phantoms == [f"offset {N} holds request {i}, refused with a definite error"]


def test_a_state_that_misses_a_write_is_a_mismatch():
    ledger, history, kv = clean_run()
    kv[1] = "1"  # the newest write to k1 is request 5
    f = crashtest.verify(ledger, history, N, kv)
    assert f.state_mismatches == ["key k1 is '1'; its newest write is request 5"]


def test_an_offset_read_twice_with_different_payloads_is_lost():
    ledger, history, kv = clean_run()
    i = error(ledger, 13)
    history.entry(3, ledger.payload(i))  # offset 3 held request 3, now another
    f = crashtest.verify(ledger, history, N, kv)
    assert f"offset 3 held request 3, later {i}" in f.lost


def test_indefinite_appends_are_recovered_or_not_durable():
    ledger, history, kv = clean_run()
    durable, _gone = error(ledger, 13), error(ledger, 0)
    history.entry(N, ledger.payload(durable))
    kv[durable % KEYS] = str(durable)
    f = crashtest.verify(ledger, history, N + 1, kv)
    assert (f.recovered, f.not_durable, f.unknown) == (1, 1, 0)
    assert not (f.lost or f.duplicated or f.phantoms or f.state_mismatches)


@pytest.mark.timeout(60)
def test_the_command_fails_when_an_acknowledged_entry_is_not_in_the_log(
    monkeypatch, tmp_path, capsys
):
    """The real command, one writer kill, and a fabricated ack the log does
    not hold slipped into the verdict: exit 1, FAIL, lost 1."""
    real_verify = crashtest.verify

    def verify_with_a_fabricated_ack(ledger, history, next_offset, kv):
        ack(ledger, next_offset + 3)
        return real_verify(ledger, history, next_offset, kv)

    monkeypatch.setattr(crashtest, "verify", verify_with_a_fabricated_ack)
    report = tmp_path / "report.json"
    argv = ["crashtest", "--kills", "1", "--role", "writer", "--interval", "0.2"]
    argv += ["--no-progress", "--data-dir", str(tmp_path / "data"), "--json", str(report)]
    assert walctl.main(argv) == 1
    out = capsys.readouterr().out
    assert "FAIL: lost: 1" in out
    r = json.loads(report.read_text())
    assert r["verdict"]["lost"] == 1 and not r["passed"]
    end = r["log"]["next_offset"]
    assert r["verdict"]["examples"]["lost"] == [
        f"request {r['appends']['sent'] - 1} acknowledged at {end + 3}; the log ends at {end}"
    ]
    assert os.path.isdir(tmp_path / "data")  # a given directory is never removed
