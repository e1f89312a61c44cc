"""Latency histograms kept as plain counters on the event loop.

The loop calls :meth:`LatencyHistogram.observe`; the snapshot carries :meth:`LatencyHistogram.snapshot`
(a :class:`~gateway.observe.snapshot.HistogramBlock`: cumulative bucket counts, sum and count),
which :mod:`gateway.observe.metrics` turns into a Prometheus histogram. Nothing here is shared
with another thread."""

from __future__ import annotations

import bisect
import math

from gateway.observe.snapshot import HistogramBlock

# seconds: a command round trip on a LAN is milliseconds; an alert waits out an outage (minutes, hours)
DEFAULT_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                                        60.0, 300.0, 1800.0, 3600.0)


class LatencyHistogram:
    def __init__(self, buckets_s: tuple[float, ...] = DEFAULT_BUCKETS_S) -> None:
        self.bounds = tuple(sorted(buckets_s))
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum_s = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        """One observation; negative or non-finite values (a clock step) count as 0."""
        value = seconds if math.isfinite(seconds) and seconds > 0 else 0.0
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum_s += value
        self.count += 1

    def snapshot(self) -> HistogramBlock:
        """``buckets``: ``(upper bound, cumulative count)`` pairs ending with ``"+Inf"``."""
        cumulative, running = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self._counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return HistogramBlock(tuple(cumulative), self.sum_s, self.count)
