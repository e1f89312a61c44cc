"""Time-based downsampling: at most one reading per ``every_s`` per series (by reading time)."""

from __future__ import annotations


def passes(every_s: float, last_ts_ms: int | None, ts_ms: int) -> bool:
    return every_s <= 0 or last_ts_ms is None or ts_ms - last_ts_ms >= every_s * 1000
