"""Counters kept per simulated device, and the run summary built from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class DeviceStats:
    samples: int = 0            # sampling instants taken (silent dropout samples included)
    last_seq: int = 0           # highest telemetry seq assigned (seq starts at 1 per run)
    sent: int = 0               # telemetry messages acknowledged by the broker (QoS 0: written)
    failed: int = 0             # telemetry messages lost: backlog overflow, refused or never acknowledged
    overflow: int = 0           # the part of ``failed`` refused because the backlog was full
    events_sent: int = 0
    commands_received: int = 0
    commands_answered: int = 0  # responses acknowledged by the broker
    commands_malformed: int = 0  # answered "error" (bad payload or bad args)
    commands_unknown: int = 0
    commands_expired: int = 0
    control_failed: int = 0     # events or responses that were never acknowledged
    reboots: int = 0
    errors: int = 0             # unexpected errors caught (and logged) in a device loop


@dataclass(frozen=True)
class Progress:
    sent: int
    failed: int
    reconnects: int
    connected: int
    connections: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


_TOTALS = ("samples", "sent", "failed", "overflow", "events_sent", "commands_received", "commands_answered",
           "commands_malformed", "commands_unknown", "commands_expired", "control_failed", "reboots", "errors")


def summarize(
    per_device: Sequence[tuple[str, DeviceStats]],
    *,
    elapsed_s: float,
    reconnects: int,
    requested_msg_per_s: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The run summary (also the ``--json`` output)."""
    totals = {key: sum(getattr(stats, key) for _, stats in per_device) for key in _TOTALS}
    achieved = totals["sent"] / elapsed_s if elapsed_s > 0 else 0.0
    return {
        **extra,
        "devices": len(per_device),
        "elapsed_s": round(elapsed_s, 3),
        **totals,
        "reconnects": reconnects,
        "requested_msg_per_s": round(requested_msg_per_s, 3),
        "achieved_msg_per_s": round(achieved, 3),
        "rate_met": achieved >= 0.9 * requested_msg_per_s,
        "per_device": {
            device_id: {"sent": s.sent, "failed": s.failed, "last_seq": s.last_seq}
            for device_id, s in per_device
        },
    }
