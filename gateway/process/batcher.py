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
    or from :meth:`poll` once the oldest reading waited ``max_age_s``.

    Outage batching (off unless ``outage_max_age_s`` > ``max_age_s``): while the uplink is down
    (:meth:`set_link_up`), nothing is sent anyway, so a batch may stay open for
    ``outage_max_age_s`` and hold up to ``outage_max_count`` readings (``max_bytes`` still holds):
    fewer, larger records on disk, at the price of a longer loss window on a power cut. When the
    link comes back the live limits apply again, and a batch already past them closes at once."""

    def __init__(
        self,
        max_count: int,
        max_bytes: int,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        outage_max_age_s: float = 0.0,
        outage_max_count: int = 0,
    ) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.outage_max_age_s = outage_max_age_s
        self.outage_max_count = outage_max_count
        self._link_up = False  # as at start: down until the uplink says it is connected
        self._clock = clock
        self._readings: list[Reading] = []
        self._series: dict[str, set[str]] = {}  # device -> metrics in the open batch
        self._bytes = 0
        self._opened_at: float | None = None
        self._max_now = self.limits[0]  # the readings count that closes the batch, kept up to date

    def __len__(self) -> int:
        return len(self._readings)

    @property
    def _outage(self) -> bool:
        return not self._link_up and self.outage_max_age_s > self.max_age_s

    @property
    def limits(self) -> tuple[int, float]:
        """The readings count and the age (s) at which the open batch closes, as things stand."""
        if self._outage:
            return max(self.max_count, self.outage_max_count), self.outage_max_age_s
        return self.max_count, self.max_age_s

    def set_link_up(self, up: bool) -> None:
        """Tell the batcher whether the uplink is up (outage batching applies only while it is not)."""
        self._link_up = up
        self._max_now = self.limits[0]

    def add(self, reading: Reading) -> list[Reading] | None:
        readings = self._readings
        if not readings:
            self._opened_at = self._clock()
        readings.append(reading)
        metrics = self._series.get(reading[0])
        if metrics is not None and reading[1] in metrics:
            self._bytes += READING_COST_BYTES
        else:
            self._new_series(reading[0], reading[1])
        if len(readings) >= self._max_now or self._bytes >= self.max_bytes:
            return self.flush()
        return None

    def _new_series(self, device: str, metric: str) -> None:
        self._series.setdefault(device, set()).add(metric)
        self._bytes += SERIES_COST_BYTES + len(device) + len(metric) + READING_COST_BYTES

    def _full(self) -> bool:
        return len(self._readings) >= self._max_now or self._bytes >= self.max_bytes

    def deadline(self) -> float | None:
        """Clock time at which the open batch is due, or None when empty."""
        return None if self._opened_at is None else self._opened_at + self.limits[1]

    def poll(self) -> list[Reading] | None:
        """The open batch if it is due: old enough, or over the limits (the link came back)."""
        due = self.deadline()
        if due is not None and (self._clock() >= due or self._full()):
            return self.flush()
        return None

    def flush(self) -> list[Reading] | None:
        if not self._readings:
            return None
        out = self._readings
        self._readings, self._series, self._bytes, self._opened_at = [], {}, 0, None
        return out

    def reconfigure(self, max_count: int, max_bytes: int, max_age_s: float, *, outage_max_age_s: float = 0.0,
                    outage_max_count: int = 0) -> list[Reading] | None:
        """Apply a new policy; returns the open batch if it is already over the new limits."""
        self.max_count, self.max_bytes, self.max_age_s = max_count, max_bytes, max_age_s
        self.outage_max_age_s, self.outage_max_count = outage_max_age_s, outage_max_count
        self._max_now = self.limits[0]
        return self.flush() if self._readings and self._full() else None
