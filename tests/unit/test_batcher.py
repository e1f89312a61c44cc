from __future__ import annotations

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
