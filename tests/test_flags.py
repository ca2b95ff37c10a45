"""Flags and init are checked before walnode answers anything: a value
outside a flag's range stops it with exit 2 naming the flag and the range;
an init without a usable node id is refused."""

from __future__ import annotations

import argparse

import pytest

from actors.codes import Code, Exit
from actors.config import (
    CompactorConfig,
    FrontConfig,
    FsyncPolicy,
    SupervisorConfig,
    WriterConfig,
)

# flag, value, what the message must say about the range
OUT_OF_RANGE = [
    ("--max-segment-bytes", "10", "between 64 and 1073741824 (64 B to 1 GiB)"),
    ("--max-segment-bytes", "-1", "between 64 and 1073741824 (64 B to 1 GiB)"),
    ("--max-segment-bytes", str(2**40), "between 64 and 1073741824 (64 B to 1 GiB)"),
    ("--max-payload-bytes", "0", "between 1 and 67108864 (1 B to 64 MiB)"),
    ("--request-timeout", "0", "between 0.01 and 86400.0"),
    ("--request-timeout", "nan", "between 0.01 and 86400.0"),
    ("--unavailable-wait", "-1", "between 0.0 and 86400.0"),
    ("--snapshot-every", "0", "at least 1"),
    ("--snapshot-every-bytes", "0", "at least 1"),
    ("--keep-entries", "-5", "at least 0"),
    ("--keep-snapshots", "0", "at least 1"),
    ("--max-restarts", "-1", "at least 0"),
    ("--restart-window", "0", "between 0.01 and 86400.0"),
    ("--lease-ttl", "0", "between 1 and 60 (1 s (etcd's minimum) to a minute)"),
    ("--lease-ttl", "61", "between 1 and 60"),
    ("--cluster-size", "9", "between 1 and 7 (odd: 1, 3, 5 or 7)"),
    ("--snapshot-every", "1.5", "must be an integer at least 1"),
    # digits of another script are not read as numbers (int("٦٤") is 64)
    ("--max-segment-bytes", "\u0666\u0664", "must be an integer between 64 and 1073741824"),
    ("--keep-entries", "\u0661", "must be an integer at least 0"),
    ("--request-timeout", "\u0661", "must be a number between 0.01 and 86400.0"),
]


@pytest.mark.timeout(90)
def test_a_flag_out_of_range_stops_walnode_before_it_answers(node_factory):
    for flag, value, range_text in OUT_OF_RANGE:
        node = node_factory(flag, value)
        try:
            node.send({"type": "init", "node_id": "n1", "node_ids": ["n1"]})
        except BrokenPipeError:
            pass  # it already exited: fine, that is the point
        assert node.proc.wait(10) == Exit.USAGE, (flag, value)
        node.close()
        assert node.raw == [], (flag, value, node.raw)  # not even init_ok
        err = node.stderr_text()
        assert f"argument {flag}: must be" in err and range_text in err, (flag, value, err)
        assert "started" not in err  # no process was started


def test_the_edges_of_a_range_are_allowed(node_factory):
    node = node_factory(
        "--max-segment-bytes", "64", "--request-timeout", "0.01", "--fsync", "interval:3600000ms"
    )
    assert node.init()["type"] == "init_ok"
    assert node.call({"type": "wal_segment_info"})["type"] == "wal_segment_info_ok"
    # 10 ms is a real request timeout: on a loaded machine an append can meet
    # it (error 0, its one reply). The edge is allowed if appends are served.
    for _ in range(20):
        reply = node.call({"type": "wal_append", "payload": "a"})
        if reply["type"] == "wal_append_ok":
            break
        assert reply["type"] == "error" and reply["code"] == 0, reply
    else:
        raise AssertionError("20 appends in a row timed out at --request-timeout 0.01")


@pytest.mark.timeout(60)
def test_an_fsync_interval_outside_1_ms_to_an_hour_stops_walnode(node_factory):
    """An unbounded interval was accepted and the writer crash-looped on an
    OverflowError in its poll; 0 and non-ASCII digits are refused too."""
    for value in [
        "interval:99999999999999999999ms",
        "interval:3600001ms",
        "interval:0ms",
        "interval:\u0667ms",
    ]:
        node = node_factory("--fsync", value)
        try:
            node.send({"type": "init", "node_id": "n1", "node_ids": ["n1"]})
        except BrokenPipeError:
            pass  # it already exited
        assert node.proc.wait(10) == Exit.USAGE, value
        node.close()
        assert node.raw == [], (value, node.raw)
        err = node.stderr_text()
        assert "argument --fsync:" in err and "MS between 1 and 3600000 (1 ms to an hour)" in err
        assert "started" not in err, err


def test_init_without_a_usable_node_id_is_error_12(node_factory):
    node = node_factory()
    for body, text in [
        ({"node_id": "", "node_ids": [""]}, 'node_id must be a non-empty string, got ""'),
        ({"node_id": "n1", "node_ids": ["n1", ""]}, "node_ids[1] must be a non-empty string"),
        ({"node_id": 7}, "node_id must be a string, got 7"),
        ({"node_id": "n1", "node_ids": ["n1", 2]}, "node_ids[1] must be a string, got 2"),
    ]:
        reply = node.call({"type": "init", **body})
        assert reply["code"] == Code.MALFORMED_REQUEST and text in reply["text"], reply
    assert node.call({"type": "wal_info"})["code"] == Code.TEMPORARILY_UNAVAILABLE
    assert node.init("n1")["type"] == "init_ok"


@pytest.mark.parametrize(
    "config",
    [
        WriterConfig(FsyncPolicy.parse("interval:7ms"), max_segment_bytes=4096),
        WriterConfig(),
        CompactorConfig(7, 8, 0, 1, auto_compact=False),
        CompactorConfig(),
        FrontConfig(1, 0.01, 0.0),
        FrontConfig(max_payload_bytes=5, request_timeout=1 / 3),
        SupervisorConfig(0, 2.5),
    ],
)
def test_a_child_reads_back_the_configuration_its_argv_gives(config):
    """The supervisor starts each child with config.argv(); the child parses
    it with the same declaration: it gets exactly that configuration."""
    parser = argparse.ArgumentParser()
    type(config).add_flags(parser)
    assert type(config).from_args(parser.parse_args(config.argv())) == config


def test_a_port_in_another_script_s_digits_stops_walnode_at_start(node_factory):
    """tcp://127.0.0.1:٩٤٦٤ passed the \\d+ check, then the front crash-looped
    on zmq's EINVAL until the supervisor gave up."""
    node = node_factory(
        "--roles", "front", "--connect", "tcp://127.0.0.1:\u0669\u0664", "--insecure"
    )
    assert node.proc.wait(10) == Exit.USAGE
    node.close()
    assert "expected tcp://HOST:PORT" in node.stderr_text() and node.raw == []
