"""The RecordStore conformance suite: the behaviour every store promises, asserted once and run
against every implementation (in memory, the disk buffer, the disk buffer with write-behind)."""

from __future__ import annotations

import pytest

from bridge.uplink.store import Lane, Record
from gateway.store.buffer import RECORD_OVERHEAD_BYTES, Budget
from tests.unit.store.kits import Kit, Store, clock_ms

TOPIC = "edge/gw/telemetry"
SIZE = 10
PER_RECORD = SIZE + len(TOPIC) + RECORD_OVERHEAD_BYTES  # what one record counts against a budget


def put(store: Store, lane: Lane = "telemetry", readings: int = 5) -> Record:
    return store.append(lane, TOPIC, lambda seq: bytes([seq % 256]) * SIZE, readings)


def seqs(records: list[Record]) -> list[int]:
    return [r.seq for r in records]


def test_append_and_take_keep_sequence_order_per_lane(kit: Kit) -> None:
    store = kit.open()
    appended = [put(store, lane) for lane in ("telemetry", "control", "telemetry", "telemetry", "control")]
    assert [(r.lane, r.seq) for r in appended] == [("telemetry", 1), ("control", 1), ("telemetry", 2),
                                                   ("telemetry", 3), ("control", 2)]
    taken = store.take("telemetry", 2)
    assert seqs(taken) == [1, 2] and {r.lane for r in taken} == {"telemetry"}
    assert taken[0].payload == bytes([1]) * SIZE and taken[0].topic == TOPIC and taken[0].readings == 5
    assert seqs(store.take("telemetry", 10)) == [3]
    assert seqs(store.take("control", 10)) == [1, 2]


def test_lanes_are_independent_control_first_is_the_forwarders_job(kit: Kit) -> None:
    store = kit.open()
    put(store, "control")
    put(store, "telemetry")
    # a waiting control record does not hold telemetry back (nor the reverse): the store has no
    # priority between lanes; the forwarder fills the control lane first
    assert seqs(store.take("telemetry", 10)) == [1]
    assert (store.available("control"), store.depth("control")) == (1, 1)


def test_take_leases_records_until_they_are_released_or_acked(kit: Kit) -> None:
    store = kit.open()
    for _ in range(4):
        put(store)
    taken = store.take("telemetry", 3)
    assert store.take("telemetry", 10)[0].seq == 4  # leased records are not handed out again
    assert store.take("telemetry", 10) == []
    assert (store.depth("telemetry"), store.available("telemetry"), store.in_flight("telemetry")) == (4, 0, 4)
    assert store.in_flight("control") == 0
    assert store.oldest_lease_s() >= 0.0
    store.ack(*(r.key for r in taken))
    assert (store.depth("telemetry"), store.in_flight("telemetry")) == (1, 1)


def test_release_makes_a_record_replay_and_keeps_its_place(kit: Kit) -> None:
    store = kit.open()
    first = [put(store) for _ in range(3)]
    assert not any(r.replay for r in first)
    taken = store.take("telemetry", 2)
    assert [r.replay for r in taken] == [False, False]
    store.release(taken[1].key)
    put(store)  # seq 4
    again = store.take("telemetry", 10)
    assert [(r.seq, r.replay) for r in again] == [(2, True), (3, False), (4, False)]
    assert store.release_all() == 4
    assert store.in_flight("telemetry") == 0 and store.oldest_lease_s() == 0.0
    assert [(r.seq, r.replay) for r in store.take("telemetry", 10)] == [(1, True), (2, True), (3, True), (4, True)]


def test_live_and_backlog_are_taken_separately(kit: Kit) -> None:
    store = kit.open()
    for _ in range(3):
        put(store)
    store.mark_backlog()  # a connection came up: 1..3 are backlog
    for _ in range(2):
        put(store)  # 4, 5 are live
    assert (store.available("telemetry", "live"), store.available("telemetry", "backlog")) == (2, 3)
    live = store.take("telemetry", 1, "live")
    assert [(r.seq, r.replay) for r in live] == [(4, False)]
    backlog = store.take("telemetry", 2, "backlog")
    assert [(r.seq, r.replay) for r in backlog] == [(1, True), (2, True)]
    assert (store.in_flight("telemetry", "live"), store.in_flight("telemetry", "backlog")) == (1, 2)
    store.release(live[0].key)  # sent and failed: backlog now, flagged replay
    assert store.available("telemetry", "live") == 1
    assert [(r.seq, r.replay) for r in store.take("telemetry", 10, "backlog")] == [(3, True), (4, True)]
    assert seqs(store.take("telemetry", 10, "live")) == [5]


def test_ack_deletes_one_or_many_and_only_once(kit: Kit) -> None:
    store = kit.open()
    for _ in range(4):
        put(store)
    put(store, "control", readings=0)
    taken = store.take("telemetry", 3)
    one = store.ack(taken[0].key)
    assert list(one) == [taken[0].key] and one[taken[0].key].readings == 5 and one[taken[0].key].seq == 1
    control = store.take("control", 1)
    many = store.ack(taken[1].key, taken[2].key, control[0].key)  # one write, both lanes
    assert sorted((r.lane, r.seq) for r in many.values()) == [("control", 1), ("telemetry", 2), ("telemetry", 3)]
    assert store.ack(taken[0].key) == {}  # a second ack deletes nothing
    assert store.ack() == {}
    assert (store.depth("telemetry"), store.readings("telemetry"), store.depth("control")) == (1, 5, 0)
    assert store.bytes_used("telemetry") == PER_RECORD


def test_sequence_numbers_are_never_reused_across_reopen(kit: Kit) -> None:
    store = kit.open()
    for _ in range(3):
        put(store)
    put(store, "control")
    store.ack(*(r.key for r in store.take("telemetry", 3)))  # the lane is empty again
    store = kit.reopen(store)
    assert seqs([put(store), put(store, "control")]) == [4, 2]
    store = kit.reopen(store)
    assert store.next_seq("telemetry") == 5


def test_reopen_restores_records_in_order_as_replay(kit: Kit) -> None:
    store = kit.open()
    for _ in range(4):
        put(store)
    put(store, "control")
    taken = store.take("telemetry", 2)  # in flight when the gateway stops: kept, not lost
    store.ack(taken[0].key)
    store = kit.reopen(store)
    assert (store.depth("telemetry"), store.available("telemetry"), store.in_flight("telemetry")) == (3, 3, 0)
    assert store.available("telemetry", "live") == 0
    restored = store.take("telemetry", 10)
    assert [(r.seq, r.replay) for r in restored] == [(2, True), (3, True), (4, True)]
    assert restored[0].payload == bytes([2]) * SIZE and restored[0].topic == TOPIC
    assert store.readings("telemetry") == 15 and store.depth("control") == 1


def test_budget_drops_the_oldest_records_not_in_flight_and_counts_them(kit: Kit) -> None:
    dropped: list[tuple[int, str]] = []
    store = kit.open({"telemetry": Budget(3 * PER_RECORD), "control": Budget(10**9)},
                     on_dropped=lambda rec, reason: dropped.append((rec.seq, reason)))
    for _ in range(3):
        put(store)
    inflight = store.take("telemetry", 1)  # seq 1 is being sent: it must not be dropped
    put(store)
    assert dropped == [(2, "overflow")]
    put(store)
    assert dropped == [(2, "overflow"), (3, "overflow")]
    assert store.depth("telemetry") == 3 and store.bytes_used("telemetry") <= 3 * PER_RECORD
    assert inflight[0].key in store.ack(inflight[0].key)
    assert seqs(store.take("telemetry", 10)) == [4, 5]


def test_control_records_are_never_dropped_for_capacity_only_flagged(kit: Kit) -> None:
    dropped: list[tuple[int, str]] = []
    store = kit.open({"telemetry": Budget(10**9), "control": Budget(3 * PER_RECORD)},
                     on_dropped=lambda rec, reason: dropped.append((rec.seq, reason)))
    for _ in range(5):
        put(store, "control", readings=0)
    assert store.depth("control") == 5 and dropped == []
    assert store.control_over_budget
    store.ack(*(r.key for r in store.take("control", 3)))
    assert not store.control_over_budget


@pytest.mark.parametrize("lane", ["telemetry", "control"])
def test_records_older_than_their_lanes_age_limit_expire_unless_in_flight(kit: Kit, lane: Lane) -> None:
    clock = clock_ms()
    dropped: list[tuple[str, int, str]] = []
    budget = Budget(10**9, max_age_s=60)
    store = kit.open({"telemetry": budget, "control": budget}, clock,
                     on_dropped=lambda rec, reason: dropped.append((rec.lane, rec.seq, reason)))
    put(store, lane)
    put(store, lane)
    clock.now += 30_000
    put(store, lane)
    inflight = store.take(lane, 1)
    clock.now += 31_000  # 1 and 2 are 61 s old, 3 is 31 s old
    assert store.expire() == 1
    assert dropped == [(lane, 2, "expired")]
    assert seqs(store.take(lane, 10)) == [3]
    store.release(inflight[0].key)
    assert store.expire() == 1 and dropped[-1] == (lane, 1, "expired")
    assert store.depth(lane) == 1


def test_a_payload_that_cannot_be_built_uses_no_sequence_number_and_drops_nothing(kit: Kit) -> None:
    dropped: list[tuple[int, str]] = []
    store = kit.open({"telemetry": Budget(2 * PER_RECORD), "control": Budget(10**9)},
                     on_dropped=lambda rec, reason: dropped.append((rec.seq, reason)))
    put(store)
    put(store)

    def failing(seq: int) -> bytes:
        raise ValueError("simulated: the payload could not be encoded")

    with pytest.raises(ValueError, match="simulated"):
        store.append("telemetry", TOPIC, failing, 5)
    assert dropped == [] and store.depth("telemetry") == 2
    assert put(store).seq == 3  # the failed attempt did not use up a sequence number
    assert dropped == [(1, "overflow")]
