"""`walctl bench --quick`: a smoke run of the benchmark, end to end.

It drives a real walnode at 1 and 8 in flight, the null node (the client's
own ceiling) and every peer, briefly, in two alternating rounds. The
numbers are not judged here (a loaded CI machine makes them anything);
what is checked is that every level and peer is there with a positive rate
and ordered percentiles, and that the benchmark cannot claim acks it did
not get: each level's acknowledged appends equal what the node's log holds
afterwards, read back offline from the kept data directory.
"""

from __future__ import annotations

import glob
import importlib.util
import json

import pytest

from tests.nodeproc import walctl

PEERS = ("sqlite", "rocksdict", "lmdb", "raw", "ceiling")


def _ordered(row: dict) -> None:
    assert row["appends_per_sec"] > 0, row
    assert 0 < row["p50_us"] <= row["p99_us"] <= row["p999_us"], row


def test_quick_bench_reports_every_level_and_peer_and_only_real_acks(tmp_path):
    out = tmp_path / "bench.json"
    png = tmp_path / "bench.png"
    run = walctl(
        "bench",
        "--quick",
        "--keep",
        "--data-dir",
        str(tmp_path),
        "--json",
        str(out),
        "--png",
        str(png),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(out.read_text())
    assert "walnode" in run.stdout and "sqlite3" in run.stdout  # the table was printed

    levels = [w["in_flight"] for w in results["walnode"]]
    assert levels == [1, 8]
    bench_dir = glob.glob(str(tmp_path / "walnode-bench-*"))
    assert len(bench_dir) == 1
    assert len(results["rounds"]) == 2  # --quick: two rounds, each with every system
    for one_round in results["rounds"]:
        assert [w["in_flight"] for w in one_round["walnode"]] == levels
        assert [w["in_flight"] for w in one_round["null"]] == levels
        for w in one_round["walnode"]:
            _ordered(w)
            assert w["verified"], w["verify_note"]
            assert w["errors"] == 0 and w["acked_total"] == w["sent_total"] > 0
            info = w["wal_info"]
            assert info["next_offset"] == w["acked_total"]
            assert info["first_offset"] + info["entries"] == info["next_offset"]
            # the same, from the files: the node's data directory read offline
            on_disk = walctl("info", w["data_dir"])
            assert on_disk.returncode == 0, on_disk.stderr
            assert json.loads(on_disk.stdout)["next_offset"] == w["acked_total"]
    for w in results["walnode"]:  # the median round's row, with the spread of the rates
        assert w["rounds"] == 2 and w["rate_min"] <= w["appends_per_sec"] <= w["rate_max"], w
    # the client's own ceiling: the same loop against a node without a disk
    assert [n["in_flight"] for n in results["null"]] == levels
    for n in results["null"]:
        _ordered(n)
        assert n["verified"] and n["acked_total"] > 0, n

    by_peer: dict[str, list[dict]] = {}
    for p in results["peers"]:
        by_peer.setdefault(p["system"], []).append(p)
    assert set(by_peer) == {*PEERS, "zmq"}  # zmq: the bare ipc round trip, a read's floor
    assert sorted(p["in_flight"] for p in by_peer["ceiling"]) == levels
    for name, rows in by_peer.items():
        for row in rows:
            library = {"rocksdict": "rocksdict", "lmdb": "lmdb"}.get(name)
            if library and importlib.util.find_spec(library) is None:
                assert row["note"].startswith("not installed"), row
                assert row["appends_per_sec"] is None
            else:
                _ordered(row)

    assert [r["in_flight"] for r in results["ratios"]] == levels
    for r in results["ratios"]:
        s = r["spread"]["walnode_over_sqlite"]
        assert s["rounds"] == 2 and s["min"] <= s["median"] == r["walnode_over_sqlite"] <= s["max"]
        assert r["walnode_over_null"] is not None
    # a lone read beside its floor (the null node's read plus the zmq round trip)
    one = next(w for w in results["walnode"] if w["in_flight"] == 1)
    assert one["read_p50_us"] > 0
    assert next(n for n in results["null"] if n["in_flight"] == 1)["read_p50_us"] > 0
    assert results["ratios"][0]["walnode_read_p50_over_floor"] > 0
    snap = results["snapshot"]
    assert snap["cycles"] >= 1 and snap["verified"], snap
    # one pair per round, the median round shown with the ratio's spread
    assert len(snap["per_round"]) == 2 and snap["spread"]["rounds"] == 2, snap
    assert snap["spread"]["min"] <= snap["p99_ratio"] <= snap["spread"]["max"], snap
    for key in ("without", "with"):
        assert 0 < snap[key]["p50_us"] <= snap[key]["p99_us"], snap
    assert {t["target"].split(" (")[0] for t in results["targets"]} >= {
        "walnode / sqlite3 commit rate at 1000 in flight",
        "one-at-a-time p50 / raw write+fdatasync p50",
    }
    assert png.stat().st_size > 1000


@pytest.mark.timeout(120)
def test_bench_cluster_smoke(tmp_path):
    """`walctl bench --cluster`: the single node and three replicas + a front, measured in one
    run, every level verified (the log grew by exactly the acked appends), one failover timed."""
    out = tmp_path / "cluster.json"
    res = walctl(
        "bench", "--cluster", "--seconds", "0.3", "--warmup", "0.1", "--failovers", "1",
        "--json", str(out), "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [r["in_flight"] for r in results["single"]] == [1000, 1]
    assert [r["in_flight"] for r in results["levels"]] == [1000, 1]
    assert all(r["verified"] and r["appends_per_sec"] > 0 for r in results["levels"])
    [failover] = results["failovers"]
    assert failover["killed"] != failover["next_leader"] and 0 < failover["seconds"] < 30
    assert "| 3 replicas | 1000 |" in res.stdout


@pytest.mark.timeout(30)
def test_a_window_that_gets_no_ack_closes_with_the_errors_it_got(tmp_path):
    """A window with no append acknowledged inside it is held open for the first ack (a slow
    fdatasync at 1 in flight), but not forever: a node that refuses every append (here each
    100-byte payload is over --max-payload-bytes) ends it at the hold limit, 0 acks and the
    errors counted, instead of the bench waiting for ever."""
    from walctl.bench import appends

    result = appends.run_walnode_level(str(tmp_path), 1, 0.2, 0.1, ["--max-payload-bytes", "10"])
    assert result.window_acks == 0 and result.latencies.tolist() == []
    assert result.errors > 0 and '"code": 12' in (result.first_error or ""), result.first_error
    held = appends.HOLD_MIN_S  # max(10 x 0.2 s, 2 s)
    assert 0.2 + held <= result.seconds < 0.2 + held + 2.0, result.seconds
