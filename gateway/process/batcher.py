"""Telemetry batching by count, estimated size and age (with an injectable clock)."""

from __future__ import annotations

import time
from collections.abc import Callable

from bridge.protocol.model import Reading

# Rough uncompressed cost of one reading in the columnar envelope (ts delta, value, seq delta) and
# of one new series (device and metric names, column headers).
READING_COST_BYTES = 12
SERIES_COST_BYTES = 24


class Batcher:
    """Collects readings; hands back a full batch when ``max_count`` or ``max_bytes`` is reached,
    or from :meth:`poll` once the oldest reading waited ``max_age_s``."""

    def __init__(
        self,
        max_count: int,
        max_bytes: int,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._clock = clock
        self._readings: list[Reading] = []
        self._series: set[tuple[str, str]] = set()
        self._bytes = 0
        self._opened_at: float | None = None

    def __len__(self) -> int:
        return len(self._readings)

    def add(self, reading: Reading) -> list[Reading] | None:
        if not self._readings:
            self._opened_at = self._clock()
        self._readings.append(reading)
        key = (reading.device, reading.metric)
        if key not in self._series:
            self._series.add(key)
            self._bytes += SERIES_COST_BYTES + len(reading.device) + len(reading.metric)
        self._bytes += READING_COST_BYTES
        if len(self._readings) >= self.max_count or self._bytes >= self.max_bytes:
            return self.flush()
        return None

    def deadline(self) -> float | None:
        """Clock time at which the open batch is due, or None when empty."""
        return None if self._opened_at is None else self._opened_at + self.max_age_s

    def poll(self) -> list[Reading] | None:
        due = self.deadline()
        if due is not None and self._clock() >= due:
            return self.flush()
        return None

    def flush(self) -> list[Reading] | None:
        if not self._readings:
            return None
        out = self._readings
        self._readings, self._series, self._bytes, self._opened_at = [], set(), 0, None
        return out

    def reconfigure(self, max_count: int, max_bytes: int, max_age_s: float) -> list[Reading] | None:
        """Apply a new policy; returns the open batch if it is already over the new limits."""
        self.max_count, self.max_bytes, self.max_age_s = max_count, max_bytes, max_age_s
        if len(self._readings) >= max_count or self._bytes >= max_bytes:
            return self.flush()
        return None
