"""Anomaly injection on top of clean readings (pure, seeded).

Kinds: ``spike`` (one reading far off), ``drift`` (an offset that grows for a while), ``stuck`` (the
same value repeated), ``garbage`` (NaN, a string or a huge number instead of a reading) and
``dropout`` (the whole device stays silent for a few samples). Rates are probabilities per sample;
for drift, stuck and dropout a hit starts an episode. Every sample draws the same number of random
numbers, so enabling one kind does not reshuffle the others.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from device_sim.profiles import AnomalyConfig, MetricSpec
from device_sim.signals import Number, quantize

Value = float | int | str
GARBAGE: tuple[Value, ...] = (float("nan"), "ERR", "n/a", 1e308, -1e308)


@dataclass
class _Episode:
    remaining: int = 0
    offset: float = 0.0
    step: float = 0.0
    value: Value = 0.0


class AnomalyInjector:
    """Applies a profile's anomaly rates to one device's readings."""

    def __init__(self, config: AnomalyConfig, metrics: Mapping[str, MetricSpec], rng: random.Random) -> None:
        self.config = config
        self._metrics = metrics
        self._rng = rng
        self._drift = {name: _Episode() for name in metrics}
        self._stuck = {name: _Episode() for name in metrics}
        self._last: dict[str, Value] = {}
        self._dropout_left = 0

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def dropout(self) -> bool:
        """True when this sample is silent (a dropout episode starts or continues)."""
        if not self.enabled:
            return False
        hit = self._rng.random() < self.config.dropout_rate
        if self._dropout_left > 0:
            self._dropout_left -= 1
            return True
        if hit:
            self._dropout_left = self.config.dropout_samples - 1
            return True
        return False

    def apply(self, metric: str, clean: Number) -> tuple[Value, str | None]:
        """The reading to emit for ``metric`` and the anomaly kind applied (None when clean)."""
        if not self.enabled:
            return clean, None
        cfg, spec, rng = self.config, self._metrics[metric], self._rng
        span = spec.max - spec.min
        r_garbage, r_spike, r_stuck, r_drift = rng.random(), rng.random(), rng.random(), rng.random()
        pick, sign = rng.randrange(len(GARBAGE)), rng.choice((-1.0, 1.0))
        value: Value
        kind: str | None
        stuck, drift = self._stuck[metric], self._drift[metric]
        if stuck.remaining > 0:
            stuck.remaining -= 1
            value, kind = stuck.value, "stuck"
        elif r_garbage < cfg.garbage_rate:
            value, kind = GARBAGE[pick], "garbage"
        elif r_spike < cfg.spike_rate:
            value, kind = quantize(clean + sign * cfg.spike_size * span, spec), "spike"
        elif r_stuck < cfg.stuck_rate and metric in self._last:
            stuck.remaining, stuck.value = cfg.stuck_samples - 1, self._last[metric]
            value, kind = stuck.value, "stuck"
        elif drift.remaining > 0 or r_drift < cfg.drift_rate:
            if drift.remaining == 0:
                drift.remaining, drift.offset = cfg.drift_samples, 0.0
                drift.step = sign * cfg.drift_per_sample * span
            drift.remaining -= 1
            drift.offset += drift.step
            value, kind = quantize(clean + drift.offset, spec), "drift"
        else:
            value, kind = clean, None
        if kind != "garbage":
            self._last[metric] = value
        return value, kind
