from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.protocol.model import Reading
from gateway.process.batcher import READING_COST_BYTES, Batcher
from tests.support import FakeClock


def rd(i: int) -> Reading:
    return Reading("d", "m", i, float(i), i)


def test_count_trigger() -> None:
    b = Batcher(3, 10**6, 60, FakeClock(100.0))
    assert b.add(rd(1)) is None and b.add(rd(2)) is None
    assert b.add(rd(3)) == [rd(1), rd(2), rd(3)]
    assert len(b) == 0


def test_bytes_trigger() -> None:
    b = Batcher(10**6, 40 + 5 * READING_COST_BYTES, 60, FakeClock(100.0))
    out = None
    n = 0
    while out is None:
        n += 1
        out = b.add(rd(n))
    # one series (24 + 2 name bytes) + 12 per reading crosses 100 bytes at the 7th reading
    assert len(out) == 7


def test_age_trigger_uses_first_reading_time() -> None:
    clock = FakeClock(100.0)
    b = Batcher(100, 10**6, 5, clock)
    assert b.poll() is None and b.deadline() is None
    b.add(rd(1))
    clock.now += 4.9
    b.add(rd(2))
    assert b.poll() is None
    clock.now += 0.1
    assert b.poll() == [rd(1), rd(2)]
    assert b.deadline() is None


def test_flush_and_reconfigure() -> None:
    b = Batcher(100, 10**6, 5, FakeClock(100.0))
    assert b.flush() is None
    for i in range(5):
        b.add(rd(i))
    assert b.reconfigure(3, 10**6, 5) is not None
    assert b.max_count == 3


def test_outage_batching_applies_only_while_the_link_is_down() -> None:
    clock = FakeClock(100.0)
    b = Batcher(3, 10**6, 5, clock, outage_max_age_s=60, outage_max_count=10)
    assert b.limits == (10, 60)  # down until the uplink says it is connected
    b.set_link_up(True)
    assert b.limits == (3, 5)
    b.set_link_up(False)
    for i in range(5):  # more than max_count: the outage count applies
        assert b.add(rd(i)) is None
    clock.now += 59.9
    assert b.poll() is None  # older than max_age_s, younger than outage_max_age_s
    clock.now += 0.1
    assert b.poll() == [rd(i) for i in range(5)]


def test_a_batch_over_the_live_limits_closes_as_soon_as_the_link_is_back() -> None:
    clock = FakeClock(100.0)
    b = Batcher(3, 10**6, 5, clock, outage_max_age_s=60, outage_max_count=10)
    for i in range(4):
        b.add(rd(i))
    b.set_link_up(True)
    assert b.poll() == [rd(i) for i in range(4)]  # over max_count now, though only 0 s old
    b.add(rd(9))
    b.set_link_up(False)
    clock.now += 30
    b.set_link_up(True)  # 30 s old, past max_age_s
    assert b.poll() == [rd(9)]


def test_outage_batching_is_off_by_default_and_max_bytes_always_holds() -> None:
    clock = FakeClock(100.0)
    b = Batcher(3, 10**6, 5, clock)
    assert b.limits == (3, 5)
    small = Batcher(10**6, 40 + 5 * READING_COST_BYTES, 5, clock, outage_max_age_s=60, outage_max_count=10**6)
    out = None
    n = 0
    while out is None:
        n += 1
        out = small.add(rd(n))
    assert len(out) == 7  # the same size cut as with the link up


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.just("add"), st.just("up"), st.just("down"), st.floats(0.0, 90.0)), max_size=120),
       st.integers(1, 6), st.integers(0, 12), st.sampled_from([0.0, 5.0, 60.0]))
def test_every_reading_leaves_once_in_order_and_no_batch_breaks_its_limits(
        steps: list[str | float], max_count: int, outage_count: int, outage_age: float) -> None:
    clock = FakeClock(0.0)
    b = Batcher(max_count, 10**6, 5.0, clock, outage_max_age_s=outage_age, outage_max_count=outage_count)
    added: list[Reading] = []
    out: list[list[Reading]] = []
    for step in steps:
        if step == "add":
            added.append(rd(len(added)))
            got = b.add(added[-1])
        elif step in ("up", "down"):
            b.set_link_up(step == "up")
            got = b.poll()
        else:
            assert isinstance(step, float)
            clock.now += step
            got = b.poll()
        if got is not None:
            out.append(got)
            assert len(got) <= max(max_count, outage_count)
    rest = b.flush()
    if rest is not None:
        out.append(rest)
    assert [r for batch in out for r in batch] == added
