"""One device's readings: clean signals plus anomalies, seeded per device (pure).

The values depend only on ``(seed, device_id, profile)`` and the sequence of samples taken, so the same
seed always reproduces the same readings, whatever the scheduling or the wall clock did.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from device_sim.anomalies import AnomalyInjector, Value
from device_sim.profiles import EventSpec, Profile
from device_sim.signals import MetricSignal


@dataclass(frozen=True)
class Sample:
    """One sampling instant: the readings (empty when silent), anomaly labels and raised events."""

    values: dict[str, Value]
    anomalies: dict[str, str] = field(default_factory=dict)
    events: tuple[EventSpec, ...] = ()
    silent: bool = False


def device_rng(seed: int | None, device_id: str, purpose: str) -> random.Random:
    """A random source that depends only on the seed, the device and what it is used for."""
    if seed is None:
        return random.Random()
    return random.Random(f"{seed}/{device_id}/{purpose}")


class DeviceSampler:
    def __init__(self, profile: Profile, device_id: str, seed: int | None) -> None:
        self.profile = profile
        signal_rng = device_rng(seed, device_id, "signal")
        self.signals = {name: MetricSignal(spec, signal_rng) for name, spec in profile.metrics.items()}
        self.injector = AnomalyInjector(profile.anomalies, profile.metrics, device_rng(seed, device_id, "anomaly"))
        self._event_rng = device_rng(seed, device_id, "event")
        self.t_s = 0.0

    def sample(self, period_s: float) -> Sample:
        """Take the next sample; ``period_s`` is the nominal time since the previous one."""
        self.t_s += period_s
        clean = {name: sig.next(self.t_s) for name, sig in self.signals.items()}
        events = self._events()
        if self.injector.dropout():
            return Sample(values={}, anomalies={"*": "dropout"}, events=events, silent=True)
        values: dict[str, Value] = {}
        labels: dict[str, str] = {}
        for name, value in clean.items():
            values[name], kind = self.injector.apply(name, value)
            if kind is not None:
                labels[name] = kind
        return Sample(values=values, anomalies=labels, events=events)

    def set_setpoint(self, metric: str, value: float) -> float:
        signal = self.signals[metric]
        signal.set_setpoint(value)
        return signal.setpoint

    def _events(self) -> tuple[EventSpec, ...]:
        if not self.injector.enabled or not self.profile.events:
            return ()
        return tuple(ev for ev in self.profile.events if self._event_rng.random() < ev.rate)
