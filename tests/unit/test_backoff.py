"""Decorrelated-jitter backoff: bounds, growth towards the cap, reset, determinism."""

from __future__ import annotations

import random

import pytest

from bridge.mqtt.backoff import DecorrelatedJitter


def test_delays_stay_within_base_and_cap() -> None:
    backoff = DecorrelatedJitter(0.5, 30.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(1000)]
    assert all(0.5 <= d <= 30.0 for d in delays)


def test_each_delay_is_at_most_three_times_the_previous() -> None:
    backoff = DecorrelatedJitter(1.0, 1000.0, rng=random.Random(2))
    prev = 1.0
    for _ in range(50):
        delay = backoff.next_delay()
        assert 1.0 <= delay <= prev * 3
        prev = delay


def test_delays_grow_to_the_cap() -> None:
    backoff = DecorrelatedJitter(0.1, 10.0, rng=random.Random(3))
    delays = [backoff.next_delay() for _ in range(60)]
    assert delays[0] <= 0.3
    assert max(delays[-20:]) == 10.0  # reaches the cap...
    assert sum(delays[-20:]) / 20 > 3.0  # ...and stays in its neighbourhood


def test_reset_starts_again_from_base() -> None:
    backoff = DecorrelatedJitter(0.2, 60.0, rng=random.Random(4))
    for _ in range(30):
        backoff.next_delay()
    backoff.reset()
    assert 0.2 <= backoff.next_delay() <= 0.6


def test_same_seed_gives_the_same_sequence() -> None:
    a = DecorrelatedJitter(0.5, 20.0, rng=random.Random(42))
    b = DecorrelatedJitter(0.5, 20.0, rng=random.Random(42))
    assert [a.next_delay() for _ in range(20)] == [b.next_delay() for _ in range(20)]


def test_base_equal_to_cap_is_constant() -> None:
    backoff = DecorrelatedJitter(2.0, 2.0, rng=random.Random(5))
    assert {backoff.next_delay() for _ in range(10)} == {2.0}


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_invalid_parameters(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        DecorrelatedJitter(base, cap)
