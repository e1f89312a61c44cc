from __future__ import annotations

from pathlib import Path

import pytest

from gateway.store.buffer import RECORD_OVERHEAD_BYTES, Budget, DiskBuffer


class ClockMs:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now


def make(tmp_path: Path, tele_bytes: int = 10**9, tele_age: float = 0, clock: ClockMs | None = None,
         dropped: list[tuple[int, str]] | None = None) -> DiskBuffer:
    sink = dropped if dropped is not None else []
    buf = DiskBuffer(
        tmp_path / "buf",
        {"telemetry": Budget(tele_bytes, tele_age), "control": Budget(2000)},
        clock_ms=clock or ClockMs(),
        on_dropped=lambda rec, reason: sink.append((rec.seq, reason)),
    )
    buf.open()
    return buf


def put(buf: DiskBuffer, lane: str = "telemetry", size: int = 10, readings: int = 5) -> int:
    rec = buf.append(lane, f"t/{lane}", lambda seq: bytes([seq % 256]) * size, readings)  # type: ignore[arg-type]
    return rec.seq


def test_order_take_release_ack(tmp_path: Path) -> None:
    buf = make(tmp_path)
    seqs = [put(buf) for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    first = buf.take("telemetry", 2)
    assert [r.seq for r in first] == [1, 2]
    assert [r.seq for r in buf.take("telemetry", 10)] == [3, 4, 5]
    assert buf.take("telemetry", 10) == []
    buf.release(first[0].key)
    assert [r.seq for r in buf.take("telemetry", 10)] == [1]
    acked = buf.ack(first[1].key)
    assert acked[first[1].key].readings == 5
    assert buf.depth("telemetry") == 4 and buf.readings("telemetry") == 20
    assert buf.ack(first[1].key) == {}  # a second ack deletes nothing


def test_nothing_leaves_disk_without_ack_and_reopen_keeps_order_and_seq(tmp_path: Path) -> None:
    buf = make(tmp_path)
    for _ in range(3):
        put(buf)
    put(buf, "control")
    taken = buf.take("telemetry", 3)
    buf.ack(taken[0].key)
    buf.close()
    again = make(tmp_path)
    recs = again.take("telemetry", 10)
    assert [r.seq for r in recs] == [2, 3]
    assert all(r.replay for r in recs)
    assert recs[0].payload == bytes([2]) * 10 and recs[0].topic == "t/telemetry"
    assert again.depth("control") == 1
    assert put(again) == 4 and put(again, "control") == 2  # sequence numbers continue, never reused


def test_sequence_survives_an_empty_buffer(tmp_path: Path) -> None:
    buf = make(tmp_path)
    put(buf)
    buf.ack(buf.take("telemetry", 1)[0].key)
    buf.close()
    assert put(make(tmp_path)) == 2


def test_budget_drops_oldest_not_in_flight(tmp_path: Path) -> None:
    per = 10 + len("t/telemetry") + RECORD_OVERHEAD_BYTES
    dropped: list[tuple[int, str]] = []
    buf = make(tmp_path, tele_bytes=3 * per, dropped=dropped)
    for _ in range(3):
        put(buf)
    inflight = buf.take("telemetry", 1)  # seq 1 is being sent: must not be dropped
    buf.append("telemetry", "t/telemetry", lambda s: b"x" * 10, 5)
    assert dropped == [(2, "overflow")]
    assert buf.depth("telemetry") == 3 and buf.bytes_used("telemetry") <= 3 * per
    assert inflight[0].key in buf.ack(inflight[0].key)


def test_control_lane_is_never_dropped_for_capacity(tmp_path: Path) -> None:
    buf = make(tmp_path)
    for _ in range(20):
        put(buf, "control", size=200, readings=0)
    assert buf.depth("control") == 20
    assert buf.control_over_budget


def test_expire_by_age(tmp_path: Path) -> None:
    clock = ClockMs()
    dropped: list[tuple[int, str]] = []
    buf = make(tmp_path, tele_age=60, clock=clock, dropped=dropped)
    put(buf)
    clock.now += 30_000
    put(buf)
    clock.now += 31_000
    assert buf.expire() == 1
    assert dropped == [(1, "expired")]
    assert buf.depth("telemetry") == 1


def test_closed_buffer_raises(tmp_path: Path) -> None:
    from gateway.errors import StorageError

    buf = make(tmp_path)
    buf.close()
    with pytest.raises(StorageError):
        put(buf)


def test_a_payload_that_cannot_be_built_consumes_no_seq_and_drops_nothing(tmp_path: Path) -> None:
    from gateway.errors import StorageError

    per = 10 + len("t/telemetry") + RECORD_OVERHEAD_BYTES
    dropped: list[tuple[int, str]] = []
    buf = make(tmp_path, tele_bytes=2 * per, dropped=dropped)
    put(buf)
    put(buf)

    def failing(seq: int) -> bytes:
        raise StorageError("simulated: payload could not be built")

    with pytest.raises(StorageError):
        buf.append("telemetry", "t/telemetry", failing, 5)
    assert dropped == [] and buf.depth("telemetry") == 2
    assert put(buf) == 3  # the failed attempt did not use up a sequence number
    assert dropped == [(1, "overflow")]
