"""One-at-a-time reads, and the floor they are measured against.

A lone `wal_read` crosses two round trips: client <-> front over pipes, and
front <-> writer over ZeroMQ ipc. Its floor is the sum of the two bare ones,
measured in the same round: the pipe round trip through a Python process
(the same loop against the null node, walctl/bench/nullnode.py) and a
ZeroMQ DEALER/ROUTER ipc round trip to an echo process (`python -m
walctl.bench.reads ENDPOINT`, this module's main).
"""

from __future__ import annotations

import array
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

import zmq

READ_LINE = (
    b'{"src": "c1", "dest": "n1", "body": {"type": "wal_read", "msg_id": %d, "offset": 0}}\n'
)
READ_ID_BASE = 10**11  # below the driver's control ids, above any append's


def lone_reads(wfd: int, rfd: int, seconds: float) -> array.array:
    """wal_read of offset 0, one at a time, for `seconds`: each latency from
    the write of its line to the read of its reply's newline."""
    lat = array.array("d")
    perf = time.perf_counter
    t_end = perf() + seconds
    i = 0
    while perf() < t_end:
        t0 = perf()
        os.write(wfd, READ_LINE % (READ_ID_BASE + i))
        buf = b""
        while not buf.endswith(b"\n"):
            select.select([rfd], [], [], 5)
            try:
                chunk = os.read(rfd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                raise EOFError("the node closed stdout during the read loop")
            buf += chunk
        lat.append(perf() - t0)
        i += 1
    return lat


def zmq_round_trips(seconds: float) -> array.array:
    """DEALER -> ROUTER -> DEALER over ipc to an echo process, one at a time."""
    directory = tempfile.mkdtemp(prefix="walnode-bench-zmq-")
    endpoint = f"ipc://{os.path.join(directory, 'echo.sock')}"
    echo = subprocess.Popen([sys.executable, "-m", __name__, endpoint])
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    lat = array.array("d")
    perf = time.perf_counter
    try:
        if not sock.poll(10_000, zmq.POLLOUT):
            raise RuntimeError("the ZeroMQ echo process did not come up")
        sock.send(b"warm-up")  # the connection made before anything is timed
        if not sock.poll(10_000):
            raise RuntimeError("the ZeroMQ echo process does not answer")
        sock.recv()
        t_end = perf() + seconds
        while perf() < t_end:
            t0 = perf()
            sock.send(b"x" * 100)
            sock.recv()
            lat.append(perf() - t0)
    finally:
        sock.close()
        ctx.term()
        echo.kill()
        echo.wait()
        shutil.rmtree(directory, ignore_errors=True)
    return lat


def main() -> int:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(sys.argv[1])
    while True:
        router.send_multipart(router.recv_multipart())


if __name__ == "__main__":
    sys.exit(main())
