"""Every error code of PROTOCOL.md, with a text that says what to fix."""

from __future__ import annotations

import json
import os
import signal

from tests.nodeproc import wait_until


def test_before_init_is_error_11(node_factory):
    node = node_factory()
    body = node.call({"type": "wal_append", "payload": "x"})
    assert body["type"] == "error" and body["code"] == 11
    assert "send init first" in body["text"]
    node.init()
    assert node.call({"type": "wal_append", "payload": "x"})["offset"] == 0


def test_unknown_type_is_error_10(node_factory):
    node = node_factory()
    node.init()
    body = node.call({"type": "wal_frobnicate"})
    assert body["code"] == 10 and "wal_frobnicate" in body["text"] and "wal_append" in body["text"]


MALFORMED = [
    ({"type": "wal_append"}, "missing field 'payload'"),
    ({"type": "wal_append", "payload": 42}, "payload must be a string"),
    ({"type": "wal_append", "payload": None}, "missing field 'payload'"),
    ({"type": "wal_append", "payload": "x" * 2000}, "over the limit of 1000"),
    ({"type": "wal_read"}, "missing field 'offset'"),
    ({"type": "wal_read", "offset": "0"}, "offset must be an integer"),
    ({"type": "wal_read", "offset": -1}, "offset must be >= 0"),
    ({"type": "wal_read", "offset": True}, "offset must be an integer"),
    ({"type": "wal_read", "offset": 1.5}, "offset must be an integer"),
    ({"type": "wal_scan"}, "missing field 'from_offset'"),
    ({"type": "wal_scan", "from_offset": 0, "max_entries": 0}, "max_entries must be >= 1"),
    ({"type": "wal_segment_config"}, "missing field 'max_segment_bytes'"),
    ({"type": "wal_segment_config", "max_segment_bytes": 10}, "between 64 and"),
    ({"type": "wal_segment_config", "max_segment_bytes": 1 << 40}, "between 64 and"),
    ({"type": "wal_segment_config", "max_segment_bytes": "big"}, "must be an integer"),
    ({"type": "wal_recover", "wal_entries": "nope"}, "wal_entries must be a list"),
    ({"type": "wal_recover", "wal_entries": [{"payload": 1}]}, "wal_entries[0]"),
    ({"type": "init", "node_id": 5}, "node_id must be a string"),
    ({"type": "kv_get"}, "missing field 'key'"),
    ({"type": "wal_compact", "snapshot_at_offset": -5}, "snapshot_at_offset must be >= 0"),
    ({"type": "fsync_benchmark", "entries": 10**6}, "entries is capped at 20000"),
    ({"type": "fsync_benchmark", "strategies": ["sometimes"]}, "strategies must be"),
    ({"type": "wal_append", "payload": "x", "msg_id": "seven"}, "msg_id must be an integer"),
]


def test_malformed_requests_are_error_12_and_nothing_is_written(node_factory):
    node = node_factory("--max-payload-bytes", "1000")
    node.init()
    for req, text in MALFORMED:
        body = node.call(req) if "msg_id" not in req else None
        if body is None:
            node.send(req)
            body = node.reply_to(req["msg_id"])["body"]
        assert body["type"] == "error" and body["code"] == 12, (req, body)
        assert text in body["text"], (req, body["text"])
    info = node.call({"type": "wal_info"})
    assert info["entries"] == 0  # nothing malformed reached the log
    assert node.call({"type": "wal_append", "payload": "x" * 1000})["offset"] == 0


def test_garbage_lines_are_skipped_and_logged(node_factory):
    node = node_factory()
    node.init()
    for junk in ("not json\n", "[1, 2]\n", '{"body": {}}\n', '{"src": "c1", "body": 7}\n', "\n"):
        node.send_raw(junk)
    node.send_raw(b"\xff\xfe\n")
    assert node.call({"type": "wal_append", "payload": "still here"})["offset"] == 0
    assert node.close() == 0
    assert all(json.loads(line)["body"]["type"] != "error" for line in node.raw)
    err = node.stderr_text()
    assert "not JSON" in err and "without body.type" in err


def test_request_without_msg_id_is_applied_but_not_answered(node_factory):
    node = node_factory()
    node.init()
    node.send_raw('{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "payload": "q"}}\n')
    assert node.call({"type": "wal_read", "offset": 0})["payload"] == "q"
    assert node.close() == 0
    assert len(node.raw) == 2  # init_ok and wal_read_ok only


def test_out_of_range_read_is_error_20_with_bounds(node_factory):
    node = node_factory()
    node.init()
    body = node.call({"type": "wal_read", "offset": 0})
    assert body["code"] == 20 and body["first_offset"] == 0 and body["next_offset"] == 0
    node.call({"type": "wal_append", "payload": "x"})
    body = node.call({"type": "wal_read", "offset": 5})
    assert body["code"] == 20 and body["next_offset"] == 1 and "not written yet" in body["text"]
    body = node.call({"type": "wal_scan", "from_offset": 7})
    assert body["code"] == 20


def test_init_with_another_node_id_is_error_22(node_factory, data_dir):
    node = node_factory("--data-dir", data_dir)
    node.init("n1")
    node.init("n1")  # the same id again is fine
    assert node.close() == 0
    node = node_factory("--data-dir", data_dir)
    body = node.call({"type": "init", "node_id": "n2", "node_ids": ["n2"]})
    assert body["code"] == 22 and "'n1'" in body["text"]
    assert node.call({"type": "wal_info"})["code"] == 11  # still not initialised
    node.init("n1")


def test_writer_killed_while_holding_requests_gives_error_13(node_factory):
    node = node_factory()
    node.init()
    writer = node.pids()["writer"]
    os.kill(writer, signal.SIGSTOP)  # hold the requests inside the writer's queue
    ids = [node.send({"type": "wal_append", "payload": f"p{i}"}) for i in range(5)]
    os.kill(writer, signal.SIGKILL)
    for i in ids:
        body = node.reply_to(i)["body"]
        assert body["code"] == 13 and "may or may not" in body["text"]
    # the restarted writer serves again, and offsets go on densely
    assert wait_until(lambda: node.restarted("writer", writer))
    # what the dead writer held died with it; nothing queued for it leaks to its successor
    assert node.call({"type": "wal_append", "payload": "after"})["offset"] == 0
    assert node.call({"type": "wal_info"})["entries"] == 1


def test_writer_down_gives_error_11_after_the_wait(node_factory):
    node = node_factory(
        "--unavailable-wait", "0.3", env={"WALNODE_FAULT_WRITER_START_DELAY": "1.5"}
    )
    node.init()
    writer = node.pids()["writer"]
    os.kill(writer, signal.SIGKILL)

    def restarting() -> bool:
        p = node.process("writer")
        return p["pid"] not in (None, writer) and p["state"] == "starting"

    assert wait_until(restarting)
    body = node.call({"type": "wal_append", "payload": "too soon"})
    assert body["code"] == 11 and "retry" in body["text"]
    assert wait_until(lambda: node.restarted("writer", writer), timeout=5)
    assert node.call({"type": "wal_append", "payload": "later"})["offset"] == 0


def test_no_answer_in_time_is_error_0(node_factory):
    node = node_factory("--request-timeout", "0.5")
    node.init()
    writer = node.pids()["writer"]
    os.kill(writer, signal.SIGSTOP)
    try:
        body = node.call({"type": "wal_info"})
        assert body["code"] == 0 and "0.5 s" in body["text"]
    finally:
        os.kill(writer, signal.SIGCONT)
    assert node.call({"type": "wal_info"})["type"] == "wal_info_ok"
