"""The replication core's rules, one scripted scenario each (wal/replication/protocol.py)."""

from __future__ import annotations

from actors import messages as m
from tests.sim_store import MemoryStore
from wal.replication.protocol import (
    AppendBatch,
    AppendReply,
    Committed,
    Entry,
    InstallSnapshot,
    Position,
    PositionReply,
    PositionRequest,
    Replica,
    Resign,
    Role,
    Send,
    Snapshot,
    SyncLog,
)

IDS = ["a", "b", "c"]


def replica(rid: str, entries: list[tuple[int, bytes | None]] = (), epoch: int = 0) -> Replica:
    """A replica whose log holds `entries` as (epoch, payload), synced, at `epoch`."""
    store = MemoryStore()
    store.append([Entry(offset, e, payload) for offset, (e, payload) in enumerate(entries)])
    store.sync()
    store.set_current_epoch(epoch)
    return Replica(rid, IDS, store)


def sends(actions, to: str | None = None) -> list:
    return [a.message for a in actions if isinstance(a, Send) and to in (None, a.to)]


def elect(leader: Replica, epoch: int, positions: dict[str, Position]) -> list:
    """on_elected, then the given replicas' position replies; the actions of the last step."""
    actions = leader.on_elected(epoch)
    for sender, last in positions.items():
        actions = leader.on_message(PositionReply(epoch, sender, last))
    return actions


def test_a_follower_refuses_an_older_epoch_and_the_old_leader_steps_down():
    follower = replica("b", epoch=5)
    old = AppendBatch(3, "a", -1, 0, (Entry(0, 3, b"x"),), -1)
    [reply] = sends(follower.on_message(old))
    assert reply == AppendReply(5, "b", False, -1, -1)
    assert follower.store.end() == 0

    leader = replica("a")
    elect(leader, 3, {"b": Position(0, -1)})
    assert leader.is_leader()
    assert leader.on_message(reply) == []
    assert leader.role is Role.FOLLOWER and leader.epoch == 5
    assert Replica("a", IDS, leader.store).epoch == 5  # the newest epoch seen is durable


def test_log_matching_cuts_the_suffix_the_leader_lacks_and_acks_only_after_fsync():
    follower = replica("b", [(1, b"x"), (1, b"y"), (1, b"z")], epoch=1)
    batch = AppendBatch(2, "a", 0, 1, (Entry(1, 2, b"Y"), Entry(2, 2, b"Z")), 0)
    assert follower.on_message(batch) == [SyncLog()]  # no ack before the fsync
    assert follower.store.records() == [(1, b"x"), (2, b"Y"), (2, b"Z")]
    assert follower.store.durable_end() == 1  # the cut is durable, the new entries not yet
    follower.store.sync()
    [ack] = sends(follower.on_synced(), to="a")
    assert ack == AppendReply(2, "b", True, 2, 2)
    assert follower.commit_offset == 0


def test_a_batch_that_does_not_match_at_prev_is_refused_with_where_to_look():
    follower = replica("b", [(1, b"x"), (1, b"y")], epoch=1)
    [reply] = sends(follower.on_message(AppendBatch(3, "a", 1, 2, (), -1)))
    assert reply == AppendReply(3, "b", False, -1, 0)  # offset 1 differs: try from offset 1
    [reply] = sends(follower.on_message(AppendBatch(3, "a", 5, 3, (), -1)))
    assert reply == AppendReply(3, "b", False, -1, 1)  # we end at 1
    assert follower.store.records() == [(1, b"x"), (1, b"y")]


def test_an_older_epochs_entry_on_a_majority_commits_only_with_an_entry_of_the_leaders_epoch():
    # Raft 5.4.2 (its figure 8): the epoch-1 entry at offset 0 is on a majority (a, b) once b
    # acks it, but a leader of epoch 3 must not count that; its own first record commits both.
    leader = replica("a", [(1, b"old")], epoch=1)
    actions = elect(leader, 3, {"c": Position(0, -1)})
    assert leader.store.records() == [(1, b"old"), (3, None)]
    assert [batch.entries for batch in sends(actions, "b")] == [(Entry(1, 3, None),)]
    leader.on_message(AppendReply(3, "b", True, 0, 1))  # b: offset 0 durable, 1 not yet
    leader.store.sync()
    assert [a for a in leader.on_synced() if isinstance(a, Committed)] == []
    assert leader.commit_offset == -1
    assert leader.on_message(AppendReply(3, "b", True, 1, 1)) == [Committed(3, 1)]


def test_a_candidate_serves_only_when_no_replica_of_its_majority_is_ahead():
    behind = replica("a", [(1, b"x")], epoch=1)
    actions = behind.on_elected(4)
    assert sends(actions) == [PositionRequest(4, "a")] * 2
    assert behind.role is Role.CANDIDATE and not behind.is_leader()
    assert behind.on_message(PositionReply(4, "b", Position(2, 0))) == [Resign(4)]
    assert behind.role is Role.FOLLOWER

    ahead = replica("a", [(2, b"x"), (2, b"y")], epoch=2)
    actions = elect(ahead, 4, {"b": Position(2, 0)})
    assert ahead.is_leader() and SyncLog() in actions
    assert ahead.store.records()[-1] == (4, None)

    # A replica asked for its position adopts the epoch first: the old leader is refused after.
    voter = replica("b", [(2, b"x")], epoch=2)
    [reply] = sends(voter.on_message(PositionRequest(4, "a")))
    assert reply == PositionReply(4, "b", Position(2, 0))
    [refusal] = sends(voter.on_message(AppendBatch(2, "c", 0, 2, (Entry(1, 2, b"late"),), 0)))
    assert not refusal.ok and refusal.epoch == 4


def test_a_follower_behind_the_leaders_first_offset_gets_the_snapshot_then_the_log():
    leader = replica("a", [(1, b"p0"), (1, b"p1"), (1, b"p2")], epoch=1)
    elect(leader, 2, {"b": Position(1, 2)})
    leader.store.sync()
    leader.on_synced()
    leader.on_message(AppendReply(2, "b", True, 3, 3))  # commits 0..3 (3: epoch 2's record)
    assert leader.commit_offset == 3
    leader.store.compact(2)
    assert leader.store.start() == 3

    follower = replica("c", [(1, b"p0")], epoch=1)
    [install] = sends(leader.on_tick(), to="c")
    assert isinstance(install, InstallSnapshot) and install.snapshot.last == Position(1, 2)
    [ack] = sends(follower.on_message(install))
    assert ack == AppendReply(2, "c", True, 2, 2)
    assert follower.store.start() == 3 and follower.commit_offset == 2
    [batch] = sends(leader.on_message(ack), to="c")
    assert (batch.prev_offset, batch.prev_epoch, batch.entries) == (2, 1, (Entry(3, 2, None),))
    assert follower.on_message(batch) == [SyncLog()]
    assert follower.store.records() == [(1, b"p0"), (1, b"p1"), (1, b"p2"), (2, None)]


def test_a_lost_lease_stops_the_leader_acknowledging():
    leader = replica("a", epoch=0)
    elect(leader, 1, {"b": Position(0, -1)})
    leader.on_lease_lost()
    assert not leader.is_leader()
    assert leader.on_message(AppendReply(1, "b", True, 0, 0)) == []


def test_append_batch_ships_a_whole_group_commit_and_commits_on_a_majority():
    """The wiring's group commit: one batch, every entry shipped at once in max_batch pieces,
    one fsync; committed once one follower has it durably (a majority of three)."""
    store = MemoryStore()
    leader = Replica("a", IDS, store, max_batch=4)
    elect(leader, 1, {"b": Position(0, -1)})
    first, actions = leader.append_batch([b"p%d" % i for i in range(10)])
    assert first == 1  # offset 0: epoch 1's first record
    assert actions.count(SyncLog()) == 1
    shipped = [e.offset for batch in sends(actions, "b") for e in batch.entries]
    assert shipped == list(range(1, 11))  # all of it, pipelined, in pieces of at most 4
    assert max(len(batch.entries) for batch in sends(actions, "b")) <= 4
    store.sync()
    assert [a for a in leader.on_synced() if isinstance(a, Committed)] == []
    assert Committed(1, 10) in leader.on_message(AppendReply(1, "b", True, 10, 10))


def test_acks_all_commits_only_what_every_replica_has():
    leader = Replica("a", IDS, MemoryStore(), acks_all=True)
    elect(leader, 1, {"b": Position(0, -1)})
    leader.append_batch([b"x"])
    leader.store.sync()
    leader.on_synced()
    actions = leader.on_message(AppendReply(1, "b", True, 1, 1))
    assert not [a for a in actions if isinstance(a, Committed)]
    assert leader.commit_offset == -1  # a majority has it, not everyone
    assert Committed(1, 1) in leader.on_message(AppendReply(1, "c", True, 1, 1))


def test_every_protocol_message_survives_the_peer_wire_form():
    """actors/messages.py's msgpack schema for the replicas' links."""
    snapshot = Snapshot(Position(2, 9), {"state": {"k": "v"}, "damaged": [], "rewritten": []})
    for message in [
        AppendBatch(3, "a", 4, 2, (Entry(5, 3, b"x"), Entry(6, 3, None)), 4),
        AppendReply(3, "b", True, 5, 6),
        PositionRequest(2, "a"),
        PositionReply(2, "c", Position(1, 7)),
        InstallSnapshot(3, "a", snapshot, 9),
    ]:
        assert m.unpack_peer(m.pack_peer(message)) == message
    for garbage in [b"", b"\x93\x01\x02\x03", m.pack(["ap", 1])]:
        try:
            m.unpack_peer(garbage)
        except ValueError:
            continue
        raise AssertionError(f"{garbage!r} was read as a message")


def test_append_batch_does_not_resend_the_log_to_a_follower_that_is_behind():
    """A follower that is away (the tick rewound it to its acknowledged offset) gets nothing
    from a group commit: its replies and the tick move it on, one batch at a time. (Shipping
    it everything it lacks on every group commit read and resent the whole log each time: a
    leader with one replica down fell from ~19,000 to ~2,000 appends/s at 1000 in flight.)"""
    leader = Replica("a", IDS, MemoryStore(), max_batch=4)
    elect(leader, 1, {"b": Position(0, -1)})
    leader.append_batch([b"p%d" % i for i in range(20)])
    leader.on_message(AppendReply(1, "b", True, 20, 20))  # b has it all; c never answered
    leader.on_tick()  # rewinds c to offset 0
    _, actions = leader.append_batch([b"q0", b"q1"])
    assert [e.offset for batch in sends(actions, "b") for e in batch.entries] == [21, 22]
    assert sends(actions, "c") == []
