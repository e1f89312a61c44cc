from __future__ import annotations

import pytest

from bridge.uplink.pacing import RateMeter, TokenBucket
from tests.support import FakeClock


def test_token_bucket_allows_a_burst_then_paces_to_the_rate() -> None:
    clock = FakeClock(100.0)
    bucket = TokenBucket(rate=1000, burst=2000, clock=clock)
    sent = 0
    while bucket.wait_s() == 0:
        bucket.spend(600)
        sent += 600
    assert sent == 2400  # the burst plus one record that took it below zero
    assert bucket.wait_s() == pytest.approx(0.4, abs=0.01)  # 400 bytes of debt at 1000 B/s
    clock.now += 0.41
    assert bucket.wait_s() == 0
    for _ in range(100):  # over a long run the rate holds exactly
        clock.now += max(bucket.wait_s(), 0)
        bucket.spend(500)
    assert 500 * 100 / (clock.now - 100.41) == pytest.approx(1000, rel=0.05)


def test_wait_for_waits_until_the_bucket_holds_the_amount_capped_at_the_burst() -> None:
    clock = FakeClock(0.0)
    bucket = TokenBucket(rate=1000, burst=2000, clock=clock)
    assert bucket.wait_for_s(2000) == 0 and bucket.wait_for_s(5000) == 0  # never more than the burst
    bucket.spend(1500)
    assert bucket.wait_s() == 0 and bucket.wait_for_s(1000) == pytest.approx(0.5, abs=0.01)  # 500 bytes held
    clock.now += 0.5
    assert bucket.wait_for_s(1000) == 0


def test_token_bucket_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(rate=0, burst=10)


def test_rate_meter_counts_a_sliding_window() -> None:
    clock = FakeClock(100.0)
    meter = RateMeter(window_s=10, clock=clock)
    assert meter.rate() == 0
    for _ in range(10):
        meter.add(1000)
        clock.now += 1
    assert meter.rate() == pytest.approx(1000, rel=0.15)
    clock.now += 30  # nothing for a while: the window empties
    assert meter.rate() == 0
