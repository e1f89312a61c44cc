"""Latency histograms kept on the event loop: cumulative buckets that Prometheus can read."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from gateway.observe.latency import DEFAULT_BUCKETS_S, LatencyHistogram

values = st.floats(min_value=-10.0, max_value=10_000.0) | st.sampled_from([math.nan, math.inf, -math.inf])


@given(st.lists(values, max_size=200))
def test_buckets_are_cumulative_and_count_every_observation(observed: list[float]) -> None:
    h = LatencyHistogram()
    for v in observed:
        h.observe(v)
    snap = h.snapshot()
    counts = [n for _bound, n in snap.buckets]
    assert counts == sorted(counts), "cumulative counts never decrease"
    assert snap.buckets[-1] == ("+Inf", len(observed)) and snap.count == len(observed)
    kept = [v if math.isfinite(v) and v > 0 else 0.0 for v in observed]
    assert math.isclose(snap.sum_s, sum(kept), rel_tol=1e-9, abs_tol=1e-9)
    for bound, n in snap.buckets[:-1]:
        assert n == sum(1 for v in kept if v <= float(bound)), bound


def test_bounds_are_the_documented_range() -> None:
    assert (DEFAULT_BUCKETS_S[0], DEFAULT_BUCKETS_S[-1]) == (0.005, 3600.0)
    assert [b for b, _n in LatencyHistogram().snapshot().buckets][-1] == "+Inf"
