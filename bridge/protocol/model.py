"""Plain data types shared by the gateway and the cloud side."""

from __future__ import annotations

from typing import Literal, NamedTuple, TypeAlias

Lane = Literal["control", "telemetry"]
"""The two uplink lanes: control records (sent first, never dropped for capacity) and telemetry."""
LANES: tuple[Lane, Lane] = ("control", "telemetry")

Value: TypeAlias = float | int
"""A reading's value: a finite double, or an integer beyond +-2**53 (up to the int64/uint64 range)
that no double holds exactly. See :func:`bridge.protocol.codec.carried`."""


class Reading(NamedTuple):
    """One measured value: the unit that the accounting counts.

    ``ts_ms`` is epoch milliseconds (device time, or receive time when the device sent none);
    ``seq`` is the device's own message sequence number when it sent one. ``value`` is a float
    except for integers too large for a double to hold exactly.
    """

    device: str
    metric: str
    ts_ms: int
    value: Value
    seq: int | None = None
