"""Profiles: what a simulated device measures and how its readings behave (pure, no I/O but TOML reading).

A profile has metrics (each with a base, a signal shape, noise, a unit, a physical valid range and a
rounding resolution), anomaly rates and random events. Built-in profiles live in
:mod:`device_sim.builtin_profiles`; users can add their own in a TOML file (see
``conf/profiles.example.toml``).
"""

from __future__ import annotations

import math
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from device_sim.errors import SimConfigError
from device_sim.topics import ID_PATTERN, METRIC_RE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_RESERVED_METRICS = {"ts", "seq"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricSpec(_Model):
    """One measured quantity."""

    unit: str = ""
    base: float
    signal: Literal["walk", "sine", "constant", "counter"] = "walk"
    step: float = Field(default=0.0, ge=0, description="walk: std dev of one step; counter: mean increase per sample")
    reversion: float = Field(default=0.02, ge=0, le=1, description="walk: pull back toward base per sample")
    amplitude: float = Field(default=0.0, ge=0, description="sine: peak deviation from base")
    period_s: float = Field(default=3600.0, gt=0, description="sine: period in seconds")
    noise: float = Field(default=0.0, ge=0, description="std dev of measurement noise added to each reading")
    min: float
    max: float
    resolution: float = Field(default=0.01, gt=0, description="readings are rounded to a multiple of this")

    @model_validator(mode="after")
    def _check_range(self) -> MetricSpec:
        if not (math.isfinite(self.min) and math.isfinite(self.max) and self.min < self.max):
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        if not self.min <= self.base <= self.max:
            raise ValueError(f"base {self.base} is outside the valid range [{self.min}, {self.max}]")
        return self

    @property
    def decimals(self) -> int:
        """Number of decimals implied by the resolution (0.01 → 2, 0.5 → 1, 1 → 0)."""
        exponent = Decimal(repr(self.resolution)).normalize().as_tuple().exponent
        return max(0, -exponent) if isinstance(exponent, int) else 0


class AnomalyConfig(_Model):
    """Anomaly injection. Rates are probabilities per sample (per metric, dropout per device)."""

    enabled: bool = False
    spike_rate: float = Field(default=0.0, ge=0, le=1)
    spike_size: float = Field(default=0.5, gt=0, description="spike height as a fraction of the valid range")
    drift_rate: float = Field(default=0.0, ge=0, le=1)
    drift_per_sample: float = Field(default=0.01, gt=0, description="drift per sample as a fraction of the range")
    drift_samples: int = Field(default=50, ge=1)
    stuck_rate: float = Field(default=0.0, ge=0, le=1)
    stuck_samples: int = Field(default=20, ge=1)
    dropout_rate: float = Field(default=0.0, ge=0, le=1)
    dropout_samples: int = Field(default=10, ge=1)
    garbage_rate: float = Field(default=0.0, ge=0, le=1)


class EventSpec(_Model):
    """A device event raised at random (only when anomalies are enabled)."""

    name: str = Field(pattern=f"^{ID_PATTERN}$")
    rate: float = Field(ge=0, le=1, description="probability per sample")
    detail: str | dict[str, Any] | None = None


class Profile(_Model):
    name: str = ""
    description: str = ""
    metrics: dict[str, MetricSpec]
    anomalies: AnomalyConfig = AnomalyConfig()
    events: tuple[EventSpec, ...] = ()

    @field_validator("metrics")
    @classmethod
    def _check_metrics(cls, metrics: dict[str, MetricSpec]) -> dict[str, MetricSpec]:
        if not metrics:
            raise ValueError("a profile needs at least one metric")
        for name in metrics:
            if METRIC_RE.fullmatch(name) is None or name in _RESERVED_METRICS:
                raise ValueError(f"bad metric name {name!r}: use [A-Za-z0-9_.-], not 'ts' or 'seq'")
        return metrics

    def with_anomalies(self, enabled: bool) -> Profile:
        if not enabled or self.anomalies.enabled:
            return self
        return self.model_copy(update={"anomalies": self.anomalies.model_copy(update={"enabled": True})})


class ProfilesFile(_Model):
    profiles: dict[str, Profile]


def parse_profiles(data: dict[str, Any], source: str) -> dict[str, Profile]:
    """Validate a ``{"profiles": {...}}`` mapping; profile names come from the table keys."""
    try:
        parsed = ProfilesFile.model_validate(data)
    except ValidationError as exc:
        raise SimConfigError(f"invalid profile file {source}: {_describe(exc)}") from exc
    if not parsed.profiles:
        raise SimConfigError(f"profile file {source} defines no [profiles.NAME] table")
    return {name: prof.model_copy(update={"name": name}) for name, prof in parsed.profiles.items()}


def load_profiles_file(path: Path) -> dict[str, Profile]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SimConfigError(f"cannot read profile file {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SimConfigError(f"profile file {path} is not valid TOML: {exc}") from exc
    return parse_profiles(data, str(path))


def resolve_profile(spec: str) -> Profile:
    """A built-in name, a TOML file (with exactly one profile), or ``FILE#NAME``."""
    from device_sim.builtin_profiles import BUILTIN_PROFILES

    if spec in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[spec]
    path_text, _, name = spec.partition("#")
    path = Path(path_text)
    if not path.is_file():
        known = ", ".join(sorted(BUILTIN_PROFILES))
        raise SimConfigError(f"unknown profile {spec!r}: not a built-in profile ({known}) nor a file")
    profiles = load_profiles_file(path)
    if name:
        if name not in profiles:
            raise SimConfigError(f"profile {name!r} not found in {path} (has: {', '.join(profiles)})")
        return profiles[name]
    if len(profiles) != 1:
        raise SimConfigError(f"{path} defines several profiles ({', '.join(profiles)}): pick one with FILE#NAME")
    return next(iter(profiles.values()))


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
