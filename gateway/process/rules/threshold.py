"""Threshold alerts with hysteresis.

``max`` is raised when the value goes above ``max`` and cleared when it comes back to
``max - hysteresis`` or below; ``min`` mirrors that. A value hovering at the line therefore raises
one alert, not one per reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.config import AlertSpec

Level = Literal["max", "min"]


@dataclass(frozen=True)
class AlertChange:
    level: Level
    state: Literal["raised", "cleared"]
    threshold: float


_NO_CHANGES: tuple[AlertChange, ...] = ()


def evaluate(
    spec: AlertSpec, active: frozenset[Level], value: float
) -> tuple[frozenset[Level], tuple[AlertChange, ...]]:
    """Return the new set of active alert levels and the changes this value caused."""
    hi, lo = spec.max, spec.min
    if (hi is None or ("max" in active) == (value > hi) or ("max" in active and value > hi - spec.hysteresis)) and (
        lo is None or ("min" in active) == (value < lo) or ("min" in active and value < lo + spec.hysteresis)
    ):
        return active, _NO_CHANGES  # fast path: nothing crosses (the common case)
    changes: list[AlertChange] = []
    now = set(active)
    if spec.max is not None:
        if "max" not in active and value > spec.max:
            now.add("max")
            changes.append(AlertChange("max", "raised", spec.max))
        elif "max" in active and value <= spec.max - spec.hysteresis:
            now.discard("max")
            changes.append(AlertChange("max", "cleared", spec.max))
    if spec.min is not None:
        if "min" not in active and value < spec.min:
            now.add("min")
            changes.append(AlertChange("min", "raised", spec.min))
        elif "min" in active and value >= spec.min + spec.hysteresis:
            now.discard("min")
            changes.append(AlertChange("min", "cleared", spec.min))
    return (frozenset(now) if changes else active), tuple(changes)
