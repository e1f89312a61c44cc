"""Plain data types shared by the gateway and the cloud side."""

from __future__ import annotations

from typing import NamedTuple


class Reading(NamedTuple):
    """One measured value: the unit that the accounting counts.

    ``ts_ms`` is epoch milliseconds (device time, or receive time when the device sent none);
    ``seq`` is the device's own message sequence number when it sent one.
    """

    device: str
    metric: str
    ts_ms: int
    value: float
    seq: int | None = None
