"""`walctl crashtest --power-loss` end to end: a real walnode under load with
its file-system changes traced, power cut through the per-file disk model,
a real walnode started on what each cut kept.

Under `--fsync always` nothing acknowledged is lost and every start serves;
under `--fsync never` the same campaign reports the losses that policy
allows (so it does detect loss), and still no start is refused.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.nodeproc import REPO, WALCTL, walctl


def campaign(tmp_path, *flags: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "report.json"
    argv = ["crashtest", "--power-loss", "--no-progress", "--seed", "7"]
    done = walctl(  # on a timeout it stops the campaign's walnode too
        *argv,
        "--json",
        str(out),
        *flags,
        timeout=150,
        env={"TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert out.exists(), done.stdout + done.stderr
    return done, json.loads(out.read_text())


@pytest.mark.timeout(180)
def test_power_loss_under_always_loses_nothing_and_every_start_serves(tmp_path):
    done, r = campaign(tmp_path, "--cuts", "12", "--fsync", "always", "--appends", "1000")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (r["cuts"], r["lost"], r["duplicated"], r["refused_starts"]) == (12, 0, 0, 0), r
    assert r["acknowledged"] >= 1000 and r["acknowledged_at_cuts"] > 0
    assert {v["keep"] for v in r["per_cut"]} >= {
        "durable only",
        "random per file and per directory",
    }
    assert all(v["restart_ms"] > 0 for v in r["per_cut"]) and r["restart_ms"]["worst"] > 0
    assert "PASS" in done.stdout and "lost: 0" in done.stdout


@pytest.mark.timeout(180)
def test_power_loss_under_never_shows_the_losses(tmp_path):
    png = tmp_path / "cuts.png"
    done, r = campaign(
        tmp_path, "--cuts", "6", "--fsync", "never", "--appends", "600", "--png", str(png)
    )
    assert done.returncode == 0, done.stdout + done.stderr  # losses are what never allows
    assert r["lost"] > 0 and r["cuts_with_loss"] > 0, r
    # the cut right before the stop's sync, after the whole load: nothing was fsynced
    last = max(r["per_cut"], key=lambda v: v["trace_record"])
    assert (last["keep"], last["acknowledged"]) == ("durable only", r["acknowledged"])
    assert last["lost"] > 0
    assert (r["duplicated"], r["refused_starts"]) == (0, 0)
    assert "may lose these" in done.stdout
    assert png.stat().st_size > 10_000


def test_power_loss_refuses_a_policy_it_does_not_know(tmp_path):
    done = subprocess.run(
        [*WALCTL, "crashtest", "--power-loss", "--fsync", "sometimes"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2 and "always, never or interval:MSms" in done.stderr
