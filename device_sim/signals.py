"""Clean value generators: one per metric, driven by a seeded ``random.Random`` (pure).

A generator's output depends only on its spec, its random source and the nominal sample time, never
on the wall clock, so the same seed gives the same readings. Clean readings always stay inside the
metric's valid range and are rounded to its resolution.
"""

from __future__ import annotations

import math
import random

from device_sim.profiles import MetricSpec

Number = float | int


def quantize(value: float, spec: MetricSpec) -> Number:
    """Round to the metric's resolution and decimals (an int when the resolution is whole)."""
    stepped = round(value / spec.resolution) * spec.resolution
    decimals = spec.decimals
    if decimals == 0:
        return round(stepped)
    return round(stepped, decimals)


def clamp(value: float, spec: MetricSpec) -> float:
    return min(spec.max, max(spec.min, value))


class MetricSignal:
    """The clean series of one metric."""

    def __init__(self, spec: MetricSpec, rng: random.Random) -> None:
        self.spec = spec
        self._rng = rng
        self.setpoint = spec.base
        self._phase = rng.uniform(0.0, 2 * math.pi)
        span = spec.max - spec.min
        start = spec.base + rng.gauss(0.0, spec.step) if spec.signal == "walk" else spec.base
        self._state = clamp(start, spec) if span > 0 else spec.base

    def set_setpoint(self, value: float) -> None:
        """Move the value the signal centres on (the ``set_setpoint`` command)."""
        self.setpoint = clamp(value, self.spec)
        if self.spec.signal in ("constant", "counter"):
            self._state = self.setpoint

    def next(self, t_s: float) -> Number:
        """The clean reading at nominal time ``t_s`` seconds since the device started."""
        spec = self.spec
        if spec.signal == "walk":
            self._state += self._rng.gauss(0.0, spec.step) + spec.reversion * (self.setpoint - self._state)
            self._state = _reflect(self._state, spec)
            raw = self._state
        elif spec.signal == "sine":
            raw = self.setpoint + spec.amplitude * math.sin(2 * math.pi * t_s / spec.period_s + self._phase)
        elif spec.signal == "counter":
            self._state += max(0.0, self._rng.gauss(spec.step, spec.step / 4))
            if self._state > spec.max:  # a meter rolls over
                self._state = spec.min
            raw = self._state
        else:
            raw = self.setpoint
        if spec.noise > 0 and spec.signal != "counter":
            raw += self._rng.gauss(0.0, spec.noise)
        value = quantize(clamp(raw, spec), spec)
        if value > spec.max:  # rounding may step just past a bound that is not a multiple of the resolution
            value = quantize(value - spec.resolution, spec)
        elif value < spec.min:
            value = quantize(value + spec.resolution, spec)
        return value


def _reflect(value: float, spec: MetricSpec) -> float:
    """Keep a random walk inside the range by bouncing off the bounds."""
    if value > spec.max:
        value = spec.max - (value - spec.max)
    if value < spec.min:
        value = spec.min + (spec.min - value)
    return clamp(value, spec)
