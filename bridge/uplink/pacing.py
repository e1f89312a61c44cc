"""Pacing of the telemetry lane: an optional byte-rate cap and the backlog drain-rate meter."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class TokenBucket:
    """A byte-rate cap for metered links.

    ``rate`` bytes per second refill the bucket up to ``burst`` bytes. A send is allowed while the
    bucket is not empty and may take it below zero (a record is never split), so the long-run
    rate is exact and a burst overshoots by at most one record.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def wait_s(self) -> float:
        """Seconds until a send is allowed (0 = now)."""
        self._refill()
        return 0.0 if self._tokens > 0 else -self._tokens / self.rate + 1e-3

    def wait_for_s(self, amount: float) -> float:
        """Seconds until the bucket holds ``amount`` bytes (at most ``burst``; 0 = now): for a sender
        that must not take the bucket below zero."""
        self._refill()
        missing = min(amount, self.burst) - self._tokens
        return 0.0 if missing <= 0 else missing / self.rate + 1e-3

    def spend(self, size: int) -> None:
        self._refill()
        self._tokens -= size


class RateMeter:
    """Events per second over a sliding window (e.g. backlog readings acknowledged)."""

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window_s
        self._clock = clock
        self._events: deque[tuple[float, int]] = deque()
        self._sum = 0

    def add(self, count: int) -> None:
        now = self._clock()
        self._events.append((now, count))
        self._sum += count
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self._window:
            self._sum -= self._events.popleft()[1]

    def rate(self) -> float:
        now = self._clock()
        self._trim(now)
        if not self._events:
            return 0.0
        span = max(now - self._events[0][0], 1.0)  # short bursts are not extrapolated past 1 s
        return self._sum / span
