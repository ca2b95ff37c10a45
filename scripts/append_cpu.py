"""CPU per append of the front's and the writer's Python work, in-process.

The hot path of `walctl bench` at 1000 in flight without its sockets, its
pipes and its fdatasync: a real Front (its inbox in a temporary run
directory, its stdout /dev/null) takes chunks of 1000 wal_append lines,
forwards them as one message, and answers the writer's reply; a real Writer
(a log in a temporary data directory, --fsync never) handles that message,
writes it and builds its reply. Each side's process_time per append is the
median over the rounds; the sockets' share (a zmq send and receive of each
message) is not in these figures. Repeatable to a few percent on a quiet machine,
unlike the bench's CPU figures, so a change to either side's per-append work
shows here first (the bench confirms it).

    .venv/bin/python scripts/append_cpu.py [--rounds 7] [--batches 200] [--profile] [--repo DIR]

Instructions per append, which the machine's load does not move (one side's
work, the other's replayed; the difference of two batch counts):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python scripts/append_cpu.py --only front --batches 2   (then 12)
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import statistics
import sys
import tempfile
import time

# --repo: measure another checkout's code (e.g. main's, for a before/after)
_repo = sys.argv[sys.argv.index("--repo") + 1] if "--repo" in sys.argv else None
sys.path.insert(0, _repo or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zmq  # noqa: E402

from actors import messages as m  # noqa: E402
from actors.config import FsyncPolicy  # noqa: E402
from actors.front import GC_YOUNG_OBJECTS, Front  # noqa: E402
from actors.output import Output  # noqa: E402
from actors.writer import Writer  # noqa: E402
from wal import DataDir, Log  # noqa: E402

IN_FLIGHT = 1000


class Capture:
    """A peer's socket: keeps the last message sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)


def lines_chunk(first_msg_id: int, count: int) -> bytes:
    payload = "set k%d=" + "v" * 88  # ~100 bytes, as the bench's
    return b"".join(
        b'{"src": "c1", "dest": "n1", "body": {"type": "wal_append", "msg_id": %d, '
        b'"payload": "%s"}}\n' % (first_msg_id + i, (payload % (i % 1000)).encode())
        for i in range(count)
    )


def make_front(run_dir: str) -> tuple[Front, Capture]:
    front = Front(
        zmq.Context.instance(),
        run_dir,
        max_payload_bytes=1 << 20,
        max_line_bytes=1 << 21,
        request_timeout=30,
        unavailable_wait=30,
    )
    front.state.store_node_id("n1")
    front.output = Output(os.open(os.devnull, os.O_WRONLY), front.inbox)
    capture = Capture()
    for name, peer in front.peers.by_name.items():
        peer.sock.close(linger=0)
        peer.sock = capture if name == "writer" else Capture()
    return front, capture


def make_writer(data_dir: str) -> Writer:
    datadir = DataDir(data_dir)
    datadir.lock("append_cpu", None)
    wal, _ = Log.open(datadir.wal_dir, max_segment_bytes=64 << 20)
    return Writer(datadir, wal, FsyncPolicy.parse("never"))


def run(batches: int, front: Front, capture: Capture, writer: Writer, msg_id: int) -> tuple:
    """(front seconds, writer seconds) of process time for `batches` chunks."""
    front_s = writer_s = 0.0
    for _ in range(batches):
        chunk = lines_chunk(msg_id, IN_FLIGHT)
        msg_id += IN_FLIGHT
        t0 = time.process_time()
        front.on_lines(front.inbox.feed(chunk))
        front.peers.send_outboxes()
        t1 = time.process_time()
        request = capture.sent.pop()
        handled = writer.handle(m.unpack(request)[1])
        writer.commit()
        reply = m.pack([m.REPLIES, writer.replies(handled)])
        t2 = time.process_time()
        front.on_replies(m.unpack(reply))
        front.flush_output()
        t3 = time.process_time()
        front_s += (t1 - t0) + (t3 - t2)
        writer_s += t2 - t1
    return front_s, writer_s, msg_id


def replay(side: str, batches: int, front: Front, capture: Capture, writer: Writer) -> None:
    """`batches` of one side's work alone, the other's recorded once: the
    front answers the same reply bytes each time (its rids start again at
    1 every batch, so they match), the writer handles the same request."""
    chunk = lines_chunk(1, IN_FLIGHT)  # the same lines each time: their msg_ids repeat
    front.next_rid = 0
    front.on_lines(front.inbox.feed(chunk))
    front.peers.send_outboxes()
    request = capture.sent.pop()
    handled = writer.handle(m.unpack(request)[1])
    writer.commit()
    reply = m.pack([m.REPLIES, writer.replies(handled)])
    front.on_replies(m.unpack(reply))
    front.flush_output()
    for _ in range(batches):
        if side == "front":
            front.next_rid = 0
            front.on_lines(front.inbox.feed(chunk))
            front.peers.send_outboxes()
            capture.sent.pop()
            front.on_replies(m.unpack(reply))
            front.flush_output()
        else:
            handled = writer.handle(m.unpack(request)[1])
            writer.commit()
            m.pack([m.REPLIES, writer.replies(handled)])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--profile", action="store_true", help="cProfile both sides instead")
    p.add_argument("--repo", help="the checkout whose actors/ and wal/ to measure")
    p.add_argument(
        "--only",
        choices=["front", "writer"],
        help="run the batches and print nothing (for valgrind --tool=callgrind, which counts "
        "instructions: the difference between two --batches counts, per append, is the "
        "side's cost; the other side's work is replayed from a recording)",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.mkdir(f"{tmp}/run")
        front, capture = make_front(f"{tmp}/run")
        writer = make_writer(f"{tmp}/data")
        msg_id = 1
        _, _, msg_id = run(20, front, capture, writer, msg_id)  # warm
        gc.freeze()  # as the front's main() does (the writer's gets the same)
        gc.set_threshold(GC_YOUNG_OBJECTS, 10, 10)
        if args.only:
            replay(args.only, args.batches, front, capture, writer)
            return 0
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            run(args.batches, front, capture, writer, msg_id)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return 0
        fronts, writers = [], []
        for _ in range(args.rounds):
            f, w, msg_id = run(args.batches, front, capture, writer, msg_id)
            n = args.batches * IN_FLIGHT
            fronts.append(f / n * 1e6)
            writers.append(w / n * 1e6)
    print(
        f"front  {statistics.median(fronts):.2f} us/append "
        f"(range {min(fronts):.2f}-{max(fronts):.2f})"
    )
    print(
        f"writer {statistics.median(writers):.2f} us/append "
        f"(range {min(writers):.2f}-{max(writers):.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
