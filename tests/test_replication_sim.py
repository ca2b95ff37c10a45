"""The deterministic simulation of the replication protocol (tests/replsim.py).

CI runs a share of the schedules; the full 10,000 is `python -m tests.replsim --schedules 10000`
(docs/REPLICATION.md has its last result). Each broken rule is caught by the same checker.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter

import pytest

from tests.replsim import SimConfig, Simulation, Violation, main, run_schedules

CI_SCHEDULES = 2000

# The own-epoch rule only matters in Raft's figure 8: an old entry shipped alone by a later
# leader, counted, then cut by a leader of an epoch in between. Three replicas and one entry per
# batch make that schedule likely enough to appear within the first couple thousand seeds.
FIGURE_8_FAMILY = {"replicas": 3, "max_batch": 1, "steps": 400}


def explain(config: SimConfig, failure) -> str:
    return f"seed {failure.seed}: {failure.violation}\nreplay: {failure.replay_command(config)}"


@pytest.mark.timeout(300)
def test_a_ci_share_of_the_schedules_keeps_every_acknowledged_entry():
    config = SimConfig()
    failure = run_schedules(0, CI_SCHEDULES, config)
    assert failure is None, explain(config, failure)


@pytest.mark.timeout(300)
def test_the_figure_8_family_keeps_every_acknowledged_entry_with_the_rules_intact():
    config = SimConfig(**FIGURE_8_FAMILY)
    failure = run_schedules(0, 500, config)
    assert failure is None, explain(config, failure)


def test_the_schedules_do_what_they_claim():
    """Over 200 schedules every kind of fault happens, entries are acknowledged across leader
    changes, and snapshots are installed: a checker that saw none of this would prove little."""
    counts: Counter[str] = Counter()
    acknowledged = multi_epoch = 0
    for seed in range(200):
        simulation = Simulation(seed, SimConfig())
        simulation.run()
        counts += simulation.counts
        acknowledged += len(simulation.acked)
        multi_epoch += len(simulation.acked_upto) >= 2
    for kind in ("crash", "restart", "cut", "drop", "duplicate", "elect", "lease", "compact"):
        assert counts[kind] >= 50, (kind, counts)
    assert counts["InstallSnapshot"] >= 10, counts
    assert counts["PositionReply"] >= 500, counts
    assert acknowledged >= 500 and multi_epoch >= 20, (acknowledged, multi_epoch)


@pytest.mark.parametrize(
    ("broken", "family", "within"),
    [
        ("one-replica-commit", {}, 5),
        ("no-up-to-date-check", {}, 100),
        ("no-own-epoch-rule", FIGURE_8_FAMILY, 2500),
    ],
)
@pytest.mark.timeout(300)
def test_a_broken_rule_is_caught_within_the_first_schedules(broken, family, within):
    config = SimConfig(broken=broken, **family)
    failure = run_schedules(0, within, config)
    assert failure is not None, f"{broken} survived {within} schedules"
    # ... and the failing seed replays exactly: the same violation again.
    with pytest.raises(Violation) as again:
        Simulation(failure.seed, config).run()
    assert str(again.value) == failure.violation


def test_a_seed_replays_exactly_and_the_command_prints_it():
    def trace(seed: int) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["--seed", str(seed), "--trace"]) == 0
        return out.getvalue()

    first = trace(7)
    assert first == trace(7) and first != trace(8)
    assert first.splitlines()[-1] == "seed 7: ok"

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--schedules", "20", "--broken", "one-replica-commit"]) == 1
    printed = out.getvalue().splitlines()
    assert printed[0].startswith("seed 0: VIOLATION: acknowledged entry lost")
    assert printed[1] == (
        "replay: .venv/bin/python -m tests.replsim --seed 0 --steps 200 "
        "--broken one-replica-commit --trace"
    )
