"""Reconnect delays: AWS "decorrelated jitter" (``min(cap, uniform(base, previous * 3))``).

Spreads reconnects of many gateways after a cloud outage while still growing quickly towards
``cap``. Call :meth:`DecorrelatedJitter.reset` after a success.
"""

from __future__ import annotations

import random


class DecorrelatedJitter:
    """Delay generator; each delay lies in ``[base_s, cap_s]``."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        if base_s <= 0:
            raise ValueError(f"base_s must be > 0, got {base_s}")
        if cap_s < base_s:
            raise ValueError(f"cap_s ({cap_s}) must be >= base_s ({base_s})")
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()
        self._prev = base_s

    def next_delay(self) -> float:
        """The next delay in seconds: ``min(cap, uniform(base, previous * 3))``."""
        self._prev = min(self.cap_s, self._rng.uniform(self.base_s, self._prev * 3))
        return self._prev

    def reset(self) -> None:
        """Start again from ``base_s`` (call after a successful connect)."""
        self._prev = self.base_s
