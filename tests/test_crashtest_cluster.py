"""`walctl crashtest --cluster` end to end: a real etcd, three real replicas, two fronts.

A short campaign must pass: a leader kill, a freeze past the lease, a leader isolated (its
followers killed first, then it), and a power cut of the leader through the power-loss model.
After each, appends are acknowledged again within lease TTL + 3 s; every acknowledged entry is
read back through a front and is on every replica's data directory (walctl dump). The dump
comparison itself is checked on made-up dumps.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.nodeproc import walctl
from walctl.crashcluster import check_dumps


@pytest.mark.timeout(120)
def test_cluster_campaign_passes(tmp_path):
    report_path = tmp_path / "report.json"
    res = walctl(
        "crashtest",
        "--cluster",
        "--leader-kills",
        "1",
        "--freezes",
        "1",
        "--isolations",
        "1",
        "--power-cuts",
        "1",
        "--interval",
        "0.2",
        "--no-progress",
        "--seed",
        "7",
        "--data-dir",
        os.fspath(tmp_path / "campaign"),
        "--json",
        os.fspath(report_path),
    )
    report = json.loads(report_path.read_text())
    assert res.returncode == 0, (report["failures"], res.stdout[-3000:], res.stderr[-3000:])
    assert report["passed"] and report["failures"] == []
    kinds = ["leader-kill", "leader-freeze", "leader-isolated", "power-cut"]
    assert [k["role"] for k in report["kills"]] == kinds
    for kill in report["kills"]:
        assert kill["back_to_service_ms"] <= (2 + 3) * 1000, kill
    v = report["verdict"]
    assert v["acknowledged"] > 1000 and v["verified_in_log"] == v["acknowledged"], v
    assert v["lost"] == v["duplicated"] == v["phantoms"] == 0, v
    dumps = report["cluster"]["dumps"]
    assert dumps["acknowledged"] == v["acknowledged"]
    assert dumps["on_all"] + dumps["on_two"] + dumps["in_snapshots"] == dumps["acknowledged"]
    assert dumps["under_replicated"] == [] and dumps["disagreements"] == []
    assert sorted(dumps["replicas"]) == ["r1", "r2", "r3"]
    # the faults caught appends in flight: answered 13 (or acked), none lost. Not asserted per
    # fault: in one run of about a dozen one fault found none unanswered (not understood yet)
    in_flight = {k["role"]: k["in_flight"] for k in report["kills"]}
    assert sum(k["in_flight"]["appends"] > 0 for k in report["kills"]) >= 3, in_flight
    assert report["appends"]["error_13"] > 0, report["appends"]
    assert report["appends"]["double_replies"] == 0
    assert any("power-cut, its disk kept" in note for note in report["cluster"]["notes"])
    # the leader's `replication` field of wal_info, read through front A, said each replica
    # hit came level again, and at the end that every replica had the whole log
    notes = report["cluster"]["notes"]
    assert sum("caught up" in note for note in notes) == len(kinds), notes
    assert any("every replica had the whole log" in note for note in notes), notes


def test_dump_comparison_finds_what_it_must():
    acked = {0: "a", 1: "b", 2: "c"}
    dumps = {
        "r1": {0: ("a", None), 1: ("b", None), 2: ("c", None), 3: ("x", None)},
        "r2": {0: ("a", None), 1: ("b", None), 2: ("z", None), 3: ("y", None)},
        "r3": {0: ("a", None), 1: ("B", None)},
    }
    check = check_dumps(dumps, acked, end=3)
    assert (check.on_all, check.on_two) == (1, 1)
    assert check.under_replicated == ["offset 2 ('c') on 1 replica(s)"]
    # offsets 1 and 2 hold two records; offset 3 is past the committed end: not compared
    assert [d.split(":")[0] for d in check.disagreements] == ["offset 1", "offset 2"]
