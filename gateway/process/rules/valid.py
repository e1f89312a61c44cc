"""Physical validity: a value outside the sensor's possible range is invalid, not an alert."""

from __future__ import annotations

from gateway.config import Range


def within(spec: Range, value: float) -> bool:
    return (spec.min is None or value >= spec.min) and (spec.max is None or value <= spec.max)
