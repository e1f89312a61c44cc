"""Deadband: send a value only when it moved enough since the last one sent, or when the series has
been silent for ``max_silence_s`` (so a flat signal still proves it is alive)."""

from __future__ import annotations

from gateway.config import DeadbandSpec


def passes(spec: DeadbandSpec, last: tuple[int, float] | None, ts_ms: int, value: float) -> bool:
    """``last`` is ``(ts_ms, value)`` of the last reading this series sent, or None."""
    if last is None:
        return True
    last_ts, last_value = last
    if ts_ms - last_ts >= spec.max_silence_s * 1000:
        return True
    delta = abs(value - last_value)
    if spec.abs == 0 and spec.pct == 0:
        return delta > 0
    if spec.abs > 0 and delta >= spec.abs:
        return True
    return spec.pct > 0 and delta >= abs(last_value) * spec.pct / 100.0
