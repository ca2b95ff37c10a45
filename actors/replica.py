"""The replica: a cluster's log owner (`--cluster`), in the writer's place (docs/REPLICATION.md).

One process owns the log, as the writer does, and serves the fronts on the writer's sockets; it
runs the replication core (wal/replication/protocol.py `Replica`) over the log (`WalStore`) and
does what the core's actions say:

- the group commit: every append waiting on the sockets is taken in one drain, appended as one
  batch and shipped to the followers at once (pipelined with our own fdatasync); an append is
  answered only when `Committed` covers it (a majority has it durably, `--acks all`: everyone);
- the other replicas' messages: a ROUTER on --listen PORT+2, a DEALER to each other member
  (CURVE with the same KEYDIR), msgpack of the protocol's messages (actors/messages.py);
- a retransmit tick, and the election: a thread campaigns for etcd's leader key when nobody
  holds it and keeps our lease alive while we do; the main loop stops leading at the lease
  deadline (`Election.is_leader()`), whatever the thread managed;
- reads (wal_read, wal_scan, wal_info) only while leading within the lease, only up to the
  commit offset, and only once this epoch's first record is committed (before, the commit
  offset may be behind what an earlier leader acknowledged); not the leader: error 11 naming
  the leader; appends held when leadership is lost: 13 (they may still commit later);
- the compactor's notices carry the commit offset + 1 (it applies committed entries only) and
  the lease deadline (it answers kv_get only before it).

The writer's request handlers (actors/writer.py) serve everything that is not an append.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import zmq

from actors import messages as m
from actors import sockets
from actors.codes import Code, Exit
from actors.config import ClusterConfig, WriterConfig, add_process_flags
from actors.runtime import die_with_parent, ignore_stop_signals, setup_logging
from actors.writer import MAX_DRAIN_MESSAGES, Writer, log_sockets, open_log
from wal import DataDir, WalError, record
from wal.errors import DataMissing
from wal.replication import membership
from wal.replication import protocol as rp
from wal.replication.election import Election, Leader
from wal.replication.etcd import EtcdClient, EtcdError
from wal.replication.store import WalStore

log = setup_logging("replica")

TICK_S = 0.2  # the leader resends what a follower has not acknowledged this often
CAMPAIGN_POLL_S = 0.1  # while nobody holds the key: how often to look
RESIGN_BACKOFF_S = (0.5, 1.5)  # after resigning, let a more up-to-date replica win first
CANDIDATE_TIMEOUT_S = 1.0  # a position check without a majority by then: resign, start over
MEMBERS_POLL_S = 0.2
ETCD_TIMEOUT_S = 0.5  # per request: well inside the lease's margin
INPROC = "inproc://election"
ELECTED, LEASE_LOST, RESIGN, STOP = "elected", "lost", "resign", "stop"
# reads that show the log: only at the leader, in its lease, up to its commit offset
GATED_READS = frozenset({m.OP_READ, m.OP_SCAN, m.OP_INFO})


class ElectionThread(threading.Thread):
    """Campaigns for etcd's leader key while nobody holds it and keeps our lease alive while we
    do; tells the main loop over an inproc PAIR: [ELECTED, epoch], [LEASE_LOST]. The main loop
    sends [RESIGN] (revoke the key, then wait RESIGN_BACKOFF_S) and [STOP]."""

    def __init__(self, ctx: zmq.Context, election: Election) -> None:
        super().__init__(name="election", daemon=True)
        self.ctx = ctx
        self.election = election
        self.known_leader: Leader | None = None  # the key's holder as last read
        self.not_before = 0.0  # no campaign before this (monotonic)

    def run(self) -> None:
        sock = self.ctx.socket(zmq.PAIR)
        sock.connect(INPROC)
        next_keepalive = 0.0
        while True:
            holding = self.election.epoch is not None
            now = time.monotonic()
            wait = max(0.0, next_keepalive - now) if holding else CAMPAIGN_POLL_S
            if sock.poll(wait * 1000):
                command = m.unpack(sock.recv())[0]
                if command == STOP:
                    sock.close()
                    return
                if command == RESIGN:
                    self._resign()
                continue
            if holding:
                next_keepalive = time.monotonic() + self.election.ttl / 3
                if not self.election.keepalive():
                    sock.send(m.pack([LEASE_LOST]))
            elif time.monotonic() >= self.not_before:
                epoch = self._campaign()
                if epoch is not None:
                    next_keepalive = time.monotonic() + self.election.ttl / 3
                    sock.send(m.pack([ELECTED, epoch]))

    def _campaign(self) -> int | None:
        try:
            self.known_leader = self.election.leader()
            if self.known_leader is not None:
                return None
            return self.election.campaign()
        except EtcdError as err:
            log.warning("election: %s", err)
            return None

    def _resign(self) -> None:
        try:
            self.election.resign()
        except EtcdError as err:  # the lease runs out by itself
            log.warning("resigning the leader key: %s", err)
        self.not_before = time.monotonic() + random.uniform(*RESIGN_BACKOFF_S)


class PeerLinks:
    """The replication sockets: our ROUTER at --listen PORT+2, a DEALER to each other member."""

    def __init__(
        self, ctx: zmq.Context, me: str, listen: sockets.Remote, members: dict[str, str]
    ) -> None:
        self.router = sockets.bind_remote_router(ctx, listen, listen.replication)
        # A replica that reconnects (thawed, or its link dropped by the heartbeat) comes with
        # the same identity while we may still hold its dead connection: let it take over,
        # else its messages are dropped until ours times out.
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.dealers = {
            replica_id: sockets.connect_replica(
                ctx, sockets.Remote(address, listen.keys_dir, listen.key_name), me
            )
            for replica_id, address in members.items()
            if replica_id != me
        }

    def send(self, to: str, message: rp.Message) -> None:
        try:
            self.dealers[to].send(m.pack_peer(message), zmq.NOBLOCK)
        except zmq.Again:
            pass  # its queue is full (frozen or cut off): the retransmit tick sends again

    def receive(self) -> Iterator[rp.Message]:
        for _ident, data in sockets.drain(self.router, MAX_DRAIN_MESSAGES, multipart=True):
            try:
                yield m.unpack_peer(data)
            except ValueError as err:
                log.warning("dropped a message from another replica: %s", err)


@dataclass(slots=True)
class HeldAppend:
    """An append in the log, waiting for `Committed` to cover its offset."""

    offset: int
    router: zmq.Socket
    ident: bytes
    rid: int
    payload: bytes


class ReplicaServer:
    """The main loop: front requests, peer messages, the election's word, ticks."""

    def __init__(
        self,
        writer: Writer,
        store: WalStore,
        core: rp.Replica,
        election: Election,
        thread: ElectionThread,
        links: tuple[list[zmq.Socket], zmq.Socket, zmq.Socket, zmq.Socket, PeerLinks],
        cluster: ClusterConfig,
        members: dict[str, str],
    ) -> None:
        self.writer, self.store, self.core = writer, store, core
        self.election, self.thread = election, thread
        self.routers, self.control, self.notices, self.elect, self.peers = links
        self.cluster, self.members = cluster, members
        self.held: list[HeldAppend] = []  # in offset order
        self.sync_wanted = False
        self.committed_epoch = 0  # the epoch of the last Committed: reads need our own
        self.next_tick = time.monotonic() + TICK_S
        self.last_notice: tuple | None = None
        self.last_notice_at = 0.0
        self.candidate_since: float | None = None  # when the current position check began
        self.poller = zmq.Poller()
        for sock in (*self.routers, self.control, self.elect, self.peers.router):
            self.poller.register(sock, zmq.POLLIN)

    # -- the loop ------------------------------------------------------------

    def run(self) -> None:
        while True:
            events = dict(self.poller.poll(self._wait_ms()))
            # First, before anything that arrived is looked at: a replica thawed after its
            # lease ran out must not acknowledge on replies that waited for it meanwhile.
            self.check_lease()
            if self.control in events and not self.on_control(m.unpack(self.control.recv())):
                return
            if self.elect in events:
                for data in sockets.drain(self.elect):
                    self.on_election(m.unpack(data))
            if self.peers.router in events:
                for message in self.peers.receive():
                    self.perform(self.core.on_message(message))
            staged: list[HeldAppend] = []
            for router in self.routers:
                if router in events:
                    for ident, data in sockets.drain(router, MAX_DRAIN_MESSAGES, multipart=True):
                        msg = m.unpack(data)
                        if msg[0] == m.REQUESTS:
                            self.on_requests(router, ident, msg[1], staged)
            if staged:
                self.append(staged)
            if time.monotonic() >= self.next_tick:
                self.next_tick = time.monotonic() + TICK_S
                self.perform(self.core.on_tick())
            self.sync()
            self.check_lease()
            self.notify_compactor()

    def _wait_ms(self) -> int:
        wake = self.next_tick
        if self.core.role is not rp.Role.FOLLOWER:
            wake = min(wake, self.election.lease_deadline)
        return max(0, int((wake - time.monotonic()) * 1000) + 1)

    def on_control(self, msg: list) -> bool:
        """The supervisor's word; False to stop."""
        if msg[0] == m.PING:
            report = {"replication": self.replication_status()}
            self.control.send(m.pack([m.PONG, os.getpid(), report]))
        return msg[0] != m.STOP

    def on_election(self, msg: list) -> None:
        if msg[0] == ELECTED:
            log.info("won the leader key, epoch %d: asking the replicas for their logs", msg[1])
            self.perform(self.core.on_elected(msg[1]))
        # LEASE_LOST needs nothing here: check_lease reads the deadline itself

    def check_lease(self) -> None:
        """Stop leading at the lease deadline, and stop being a candidate whose position check
        got no majority in CANDIDATE_TIMEOUT_S (its messages lost: a fresh election); answer
        what is held with 13."""
        core = self.core
        now = time.monotonic()
        if core.role is not rp.Role.CANDIDATE:
            self.candidate_since = None
        elif self.candidate_since is None:
            self.candidate_since = now
        stuck = self.candidate_since is not None and now - self.candidate_since > (
            CANDIDATE_TIMEOUT_S
        )
        if core.role is not rp.Role.FOLLOWER and (stuck or not self.election.is_leader()):
            why = "no majority answered" if stuck else "the lease deadline passed"
            log.warning("epoch %d: %s; no longer leading", core.epoch, why)
            core.on_lease_lost()
            self.candidate_since = None
            self.elect.send(m.pack([RESIGN]))  # the key may still be ours: a fresh election
        if self.held and not core.is_leader():
            self.fail_held()

    # -- actions ---------------------------------------------------------------

    def perform(self, actions: list[rp.Action]) -> None:
        for action in actions:
            if isinstance(action, rp.Send):
                self.peers.send(action.to, action.message)
            elif isinstance(action, rp.SyncLog):
                self.sync_wanted = True
            elif isinstance(action, rp.Committed):
                self.committed_epoch = action.epoch
                self.release(action.offset)
            else:
                log.info("epoch %d: a replica has a longer log; resigning", action.epoch)
                self.elect.send(m.pack([RESIGN]))

    def sync(self) -> None:
        """The group commit's one fdatasync, then what the core makes of it."""
        while self.sync_wanted:
            self.sync_wanted = False
            self.writer.commit()  # raises on I/O failure: nothing is acknowledged
            if self.writer.disk_full_at is not None:
                # The log dropped entries the core has shipped and counted (next_offset went
                # back): going on could give an offset of this epoch a second entry. Exit;
                # the restart recovers from the files and rejoins as a follower.
                raise WalError(f"disk full: entries from {self.writer.disk_full_at} dropped")
            self.perform(self.core.on_synced())

    def append(self, staged: list[HeldAppend]) -> None:
        if not self.serving():
            self.reply_each(staged, self.not_leader())
            return
        first, actions = self.core.append_batch([held.payload for held in staged])
        for index, held in enumerate(staged):
            held.offset = first + index
        self.held += staged
        self.perform(actions)

    def release(self, commit_offset: int) -> None:
        """Answer every held append up to `commit_offset`: it is on a majority, durably."""
        if not self.election.is_leader():
            return  # the lease ran out: check_lease answers them 13 (a later leader decides)
        done = 0
        while done < len(self.held) and self.held[done].offset <= commit_offset:
            done += 1
        released, self.held = self.held[:done], self.held[done:]
        _send_by_front(released, lambda held: (m.OK, _append_ok(held)))

    def fail_held(self) -> None:
        text = (
            f"replica {self.core.id} stopped leading before this append was on a majority: "
            "it may or may not be in the log (a later leader may commit it); read the log "
            "back from the new leader before retrying"
        )
        held, self.held = self.held, []
        self.reply_each(held, (Code.CRASH, {"text": text}))

    def reply_each(self, appends: list[HeldAppend], result: tuple[int, dict]) -> None:
        _send_by_front(appends, lambda _held: result)

    # -- requests ----------------------------------------------------------------

    def serving(self) -> bool:
        """Leading, and within the lease: etcd cannot have given the key to another."""
        return self.core.is_leader() and self.election.is_leader()

    def on_requests(
        self, router: zmq.Socket, ident: bytes, requests: list, staged: list[HeldAppend]
    ) -> None:
        replies = []
        for rid, op, arg in requests:
            if op == m.OP_APPEND:
                staged.append(HeldAppend(-1, router, ident, rid, arg))
            elif op == m.OP_APPEND_RUN:  # each append held alone, answered as one (messages.py)
                staged += [HeldAppend(-1, router, ident, rid + i, a) for i, a in enumerate(arg)]
            elif op in GATED_READS:
                replies.append([rid, *self.gated_read(rid, op, arg)])
            elif op == m.OP_SYNC:  # the compactor's recovery barrier, or a front's wal_sync
                replies.append([rid, m.OK, {"durable_offset": self.applicable()}])
            else:
                replies.append([rid, *self.by_writer(rid, op, arg)])
        if replies:
            router.send_multipart([ident, m.pack([m.REPLIES, replies])])

    def by_writer(self, rid: int, op: str, arg: Any) -> tuple[int, dict]:
        """The writer's handler for `op` (its errors answered as the writer answers them)."""
        ((_, _, result),) = self.writer.handle([[rid, op, arg]])
        code, fields = self.writer.answer(op, result)
        return code, fields

    def gated_read(self, rid: int, op: str, arg: Any) -> tuple[int, dict]:
        """A read of the log: only while serving, and only up to the commit offset."""
        if not self.serving():
            return self.not_leader()
        if self.committed_epoch != self.core.epoch:
            return Code.TEMPORARILY_UNAVAILABLE, {
                "text": f"replica {self.core.id} leads epoch {self.core.epoch} but has not "
                "committed its first record yet, so it cannot tell what is committed: retry "
                "in a moment"
            }
        commit_next = self.core.commit_offset + 1
        first = self.writer.log.first_offset
        if op == m.OP_READ and isinstance(arg, int) and arg >= commit_next:
            return _not_committed(arg, first, commit_next)
        if op == m.OP_SCAN and isinstance(arg, list) and all(isinstance(a, int) for a in arg):
            start, limit = arg
            if start > commit_next:
                return _not_committed(start, first, commit_next)
            arg = [start, min(limit, commit_next - start)]
        code, fields = self.by_writer(rid, op, arg)
        if op == m.OP_INFO and code == m.OK:
            fields.update(
                next_offset=commit_next,
                entries=max(0, commit_next - fields["first_offset"]),
                replication=self.replication_status(),
            )
        return code, fields

    def not_leader(self) -> tuple[int, dict]:
        leader = self.core.leader_id if not self.core.is_leader() else None
        if leader is None and self.thread.known_leader is not None:
            leader = self.thread.known_leader.replica_id
        me = f"replica {self.core.id} of cluster {self.cluster.cluster!r} is not the leader"
        if leader is None or leader == self.core.id:
            text = f"{me} and no leader is known yet (an election is under way): retry shortly"
            return Code.TEMPORARILY_UNAVAILABLE, {"text": text}
        address = self.members.get(leader)
        text = f"{me}; the leader is {leader} at {address}: send it there"
        return Code.TEMPORARILY_UNAVAILABLE, {"text": text, "leader": leader, "address": address}

    # -- what others are told ------------------------------------------------------

    def applicable(self) -> int:
        """One past the last entry the compactor may apply: committed, and durable here."""
        return min(self.core.commit_offset + 1, self.store.durable_end())

    def notify_compactor(self) -> None:
        serving_until = self.election.lease_deadline if self.serving() else 0.0
        lg = self.writer.log
        notice = (self.applicable(), lg.bytes_appended, serving_until, lg.first_offset)
        now = time.monotonic()
        # again every tick even if unchanged: a restarted compactor learns it at once
        if notice != self.last_notice or now >= self.last_notice_at + TICK_S:
            try:
                self.notices.send(m.pack([m.NOTICE, *notice]), zmq.NOBLOCK)
                self.last_notice, self.last_notice_at = notice, now
            except zmq.Again:
                pass  # the compactor is behind or down; a later notice says more

    def replication_status(self) -> dict:
        """`replication` in status and wal_info (docs/REPLICATION.md)."""
        core, store = self.core, self.store
        last = store.end() - 1
        durable = {core.id: store.durable_end() - 1}
        for peer, progress in core.progress.items():
            durable[peer] = progress.durable_offset
        return {
            "role": core.role.value,
            "epoch": core.epoch,
            "leader": core.leader_id,
            "commit_offset": core.commit_offset,
            "replicas": {
                rid: {"durable_offset": offset, "lag": last - offset}
                for rid, offset in sorted(durable.items())
            },
        }


def _append_ok(held: HeldAppend) -> list:
    """The writer's success fields for a committed append (messages.append_ok_fields)."""
    length = len(held.payload)
    crc = record.checksum(length.to_bytes(4, "little"), held.payload)
    return m.append_ok_fields(held.offset, length, crc)


def _send_by_front(
    appends: list[HeldAppend], result_of: Callable[[HeldAppend], tuple[int, Any]]
) -> None:
    """One REPLIES message per front for `appends` (in their order), each with its result."""
    by_front: dict[tuple[zmq.Socket, bytes], list] = defaultdict(list)
    for held in appends:
        by_front[(held.router, held.ident)].append([held.rid, *result_of(held)])
    for (router, ident), replies in by_front.items():
        router.send_multipart([ident, m.pack([m.REPLIES, replies])])


def _not_committed(offset: int, first: int, commit_next: int) -> tuple[int, dict]:
    return Code.KEY_DOES_NOT_EXIST, {
        "text": f"offset {offset} is not committed (on a majority of replicas) yet; committed "
        f"offsets are {first} to {commit_next - 1}",
        "first_offset": first,
        "next_offset": commit_next,
    }


def join_cluster(
    cluster: ClusterConfig, address: str, datadir: DataDir
) -> tuple[EtcdClient, dict[str, str]]:
    """Register in etcd and wait until every member has: (the client, id -> address).
    MembershipError if etcd's cluster contradicts our settings, or if this id is a member
    already and this data directory has never been it (its log was lost: it must not vote)."""
    assert cluster.cluster is not None and cluster.coordinator is not None
    assert cluster.replica_id is not None
    client = EtcdClient(cluster.coordinator, timeout=ETCD_TIMEOUT_S)
    mark = membership.member_mark(cluster.cluster, cluster.replica_id)
    said = 0.0
    while True:
        try:
            recorded = datadir.read_meta().get("cluster_member")
            if recorded is not None and recorded != mark:
                raise membership.MembershipError(
                    f"data directory {datadir.path} is replica {recorded} (cluster/id), not "
                    f"{mark}: start that replica on it, or this one on its own directory"
                )
            if recorded is None:
                membership.check_new_member(
                    client, cluster.cluster, cluster.replica_id, datadir.path
                )
                datadir.update_meta(cluster_member=mark)  # durable before it is a member
            membership.register(
                client, cluster.cluster, cluster.replica_id, address, cluster.cluster_size
            )
            members = membership.members(client, cluster.cluster)
        except EtcdError as err:
            members, why = {}, str(err)
        else:
            why = f"{len(members)} of {cluster.cluster_size} replicas registered"
        if len(members) > cluster.cluster_size:
            raise membership.MembershipError(
                f"cluster {cluster.cluster!r} has {len(members)} members in etcd "
                f"({', '.join(sorted(members))}), more than --cluster-size "
                f"{cluster.cluster_size}"
            )
        if len(members) == cluster.cluster_size:
            return client, members
        if time.monotonic() - said > 5:
            log.info("waiting for the cluster to form: %s", why)
            said = time.monotonic()
        time.sleep(MEMBERS_POLL_S)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="walnode-replica")
    add_process_flags(p, data_dir=True)
    p.add_argument("--lock-fd", type=int, default=None)
    WriterConfig.add_flags(p)
    ClusterConfig.add_flags(p)
    sockets.add_remote_flags(p, "--listen")
    args = p.parse_args(argv)
    config = WriterConfig.from_args(args)
    cluster = ClusterConfig.from_args(args)
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    ignore_stop_signals()  # the supervisor decides for us
    opened = open_log(args.data_dir, args.lock_fd, config, "replica")
    if isinstance(opened, Exit):
        return opened
    datadir, wal, report = opened
    listen = sockets.remote_from(args.listen, args)
    assert listen is not None and cluster.replica_id is not None  # node.py requires them
    try:
        client, members = join_cluster(cluster, listen.endpoint, datadir)
    except membership.MembershipError as err:
        log.error("refusing to start: %s", err)
        return Exit.USAGE
    store = WalStore(datadir, wal)
    replica_ids = sorted(members)
    core = rp.Replica(cluster.replica_id, replica_ids, store, acks_all=cluster.acks == "all")
    election = Election(
        client, str(cluster.cluster), cluster.replica_id, listen.endpoint, cluster.lease_ttl
    )
    ctx = zmq.Context()
    routers, control, notices = log_sockets(ctx, args.run_dir, listen)
    peers = PeerLinks(ctx, cluster.replica_id, listen, members)
    elect = ctx.socket(zmq.PAIR)
    elect.bind(INPROC)
    thread = ElectionThread(ctx, election)
    log.info(
        "replica %s of cluster %r (%s), epoch %d, log %d..%d",
        cluster.replica_id,
        cluster.cluster,
        ", ".join(f"{rid} {address}" for rid, address in sorted(members.items())),
        core.epoch,
        store.start(),
        store.end() - 1,
    )
    control.send(m.pack([m.READY, "writer", os.getpid(), report.as_dict()]))
    writer = Writer(datadir, wal, config.fsync)
    server = ReplicaServer(
        writer,
        store,
        core,
        election,
        thread,
        (routers, control, notices, elect, peers),
        cluster,
        members,
    )
    thread.start()
    try:
        server.run()
    except DataMissing as err:
        log.critical("stopping without replying: %s", err)
        os._exit(Exit.CORRUPT)
    except (OSError, WalError) as err:
        # Never retried: what is on disk is whatever recovery will find.
        log.critical("I/O failure, exiting without acknowledging: %s", err)
        os._exit(Exit.IO)
    elect.send(m.pack([STOP]))
    thread.join(2)
    try:
        election.resign()  # a stopped replica hands the key on at once
    except EtcdError:
        pass
    wal.sync()
    wal.close()
    log.info("stopped; every entry below offset %d is durable", wal.durable_offset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
