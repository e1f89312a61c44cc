"""The accounting of outcomes outside the pipeline: what the forwarder delivers or the cloud refuses,
what ingest has no room for; and the outage clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.uplink.store import Lane, Record
from gateway.observe.accounting import INGEST_OVERFLOW, REJECTED_BY_BROKER, Accounting
from gateway.observe.delivery import DeliveryAccounting
from gateway.observe.state import Outage
from gateway.process.rejects import RejectLog

ALERTS = "edge/gw/alerts"


def record(n: int, lane: Lane, readings: int, topic: str = "edge/gw/telemetry", created_ms: int = 0) -> Record:
    return Record(f"k{n}", lane, n, topic, b"x" * 10, readings, created_ms)


outcomes = st.lists(st.tuples(st.sampled_from(["telemetry", "control"]), st.integers(1, 500),
                              st.sampled_from(["delivered", "rejected", "waiting"])), max_size=30)


@given(outcomes, st.integers(0, 20))
def test_every_buffered_reading_ends_delivered_or_dropped(records: list[tuple[Lane, int, str]],
                                                          overflows: int) -> None:
    """Readings written to the buffer, then each record delivered, refused or still waiting, plus
    messages ingest had no room for: the accounting identity holds throughout."""
    waiting: dict[str, Record] = {}
    acc = Accounting(buffered_fn=lambda: sum(r.readings for r in waiting.values() if r.lane == "telemetry"))
    delivery = DeliveryAccounting(acc, RejectLog(), ALERTS)
    recs = [record(i, lane, readings if lane == "telemetry" else 0) for i, (lane, readings, _) in enumerate(records)]
    for rec in recs:
        acc.readings_in += rec.readings
        waiting[rec.key] = rec
    for rec, (_lane, _n, outcome) in zip(recs, records, strict=True):
        if outcome == "waiting":
            continue
        del waiting[rec.key]
        (delivery.delivered(rec, len(rec.payload)) if outcome == "delivered"
         else delivery.rejected(rec, "quota exceeded"))
        assert acc.balance() == 0
    for _ in range(overflows):
        delivery.ingest_overflow("devices/d1/telemetry")
    assert acc.balance() == 0 and acc.dropped[INGEST_OVERFLOW] == overflows
    control = [(r, o) for r, (_l, _n, o) in zip(recs, records, strict=True) if r.lane == "control"]
    assert acc.control_delivered == sum(1 for _r, o in control if o == "delivered")
    assert acc.control_dropped[REJECTED_BY_BROKER] == sum(1 for _r, o in control if o == "rejected")
    assert acc.bytes_up_telemetry + acc.bytes_up_control == 10 * sum(1 for *_x, o in records if o == "delivered")


def test_alert_latency_is_measured_from_the_alert_to_the_puback() -> None:
    acc, rejects = Accounting(), RejectLog()
    delivery = DeliveryAccounting(acc, rejects, ALERTS, wall=lambda: 100.0)
    delivery.delivered(record(1, "control", 0, ALERTS, created_ms=97_500), 10)
    delivery.delivered(record(2, "control", 0, "edge/gw/responses", created_ms=0), 10)
    snap = delivery.alert_latency.snapshot()
    assert snap.count == 1 and snap.sum_s == 2.5
    delivery.ingest_overflow("devices/d9/telemetry")
    assert rejects.counts[INGEST_OVERFLOW] == 1 and rejects.recent()[0]["topic"] == "devices/d9/telemetry"


def test_the_outage_runs_from_start_until_connected_and_from_each_loss() -> None:
    now = [10.0]
    outage = Outage(lambda: now[0])
    now[0] = 12.5
    assert outage.offline_s() == 2.5
    outage.changed(True)
    now[0] = 20.0
    assert outage.offline_s() == 0.0
    outage.changed(False)
    now[0] = 21.25
    assert outage.offline_s() == 1.25
