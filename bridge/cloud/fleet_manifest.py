"""What a correct sink must end with after a fleet load run: the manifest, and how to compare it with
what a store holds.

The content checksum is order-independent and computable from stored rows: the sum, mod 2**64, of
a 64-bit BLAKE2b hash of each reading's ``(gateway, stream, batch seq, device, metric, ts_ms,
value, device seq)``. The value enters as exact text (:func:`value_text`), the same whether it
comes from a decoded batch or from a sink row (``value``, or ``value_text`` where the REAL is not
exact). A reading stored twice, lost, or changed in any field changes the sum.

Batch keys are not listed one by one: every virtual gateway numbers its lanes 1, 2, 3, ... in one
stream, so the manifest keeps per gateway its stream and the last seq of each lane, and the expected
ledger is every seq from 1 to that.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.protocol.model import Lane, Reading, Value

MASK64 = 2**64 - 1
_EXACT_REAL = 2**53
_SEP = "\x1f"

BatchKey = tuple[str, str, Lane, int]
"""(gateway, stream, lane, seq): the name of one uplink message forever."""


def value_text(value: Value) -> str:
    """A value as exact text: integers beyond +-2**53 as integers, -0.0 as ``-0.0``, the rest as the
    repr of the double (what the sink stores in ``value``, exact for them)."""
    if type(value) is int and not -_EXACT_REAL <= value <= _EXACT_REAL:
        return str(value)
    return repr(float(value))


def stored_value_text(real: float, text: str | None) -> str:
    """:func:`value_text` of a sink row (``readings.value``, ``readings.value_text``)."""
    return text if text is not None else repr(float(real))


def reading_hash(gateway: str, stream: str, batch_seq: int, device: str, metric: str, ts_ms: int,
                 value: str, seq: int | None) -> int:
    """The 64-bit hash of one reading (``value`` as exact text)."""
    text = _SEP.join((gateway, stream, str(batch_seq), device, metric, str(ts_ms), value,
                      "" if seq is None else str(seq)))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def batch_checksum(gateway: str, stream: str, batch_seq: int, readings: Iterable[Reading]) -> int:
    """The checksum contribution of one batch's readings."""
    total = 0
    for r in readings:
        total += reading_hash(gateway, stream, batch_seq, r.device, r.metric, r.ts_ms, value_text(r.value), r.seq)
    return total & MASK64


@dataclass
class GatewayRange:
    """One virtual gateway in the manifest: its stream and the last seq used on each lane."""

    stream: str
    telemetry: int = 0
    control: int = 0


@dataclass
class Manifest:
    """What a sink must hold after the run: every batch key once, the readings, their checksum,
    and the control records (alerts). ``sent`` records what the generator did (informational)."""

    gateways: dict[str, GatewayRange] = field(default_factory=dict)
    readings: int = 0
    checksum: int = 0
    alerts: int = 0
    sent: dict[str, Any] = field(default_factory=dict)

    def add_batch(self, gateway: str, stream: str, seq: int, readings: list[Reading]) -> None:
        """A new telemetry batch (never a re-sent one): seqs of a gateway must come in order."""
        entry = self._entry(gateway, stream)
        if seq != entry.telemetry + 1:
            raise ValueError(f"{gateway}: telemetry seq {seq} after {entry.telemetry}")
        entry.telemetry = seq
        self.readings += len(readings)
        self.checksum = (self.checksum + batch_checksum(gateway, stream, seq, readings)) & MASK64

    def add_control(self, gateway: str, stream: str, seq: int) -> None:
        """A new control record (an alert)."""
        entry = self._entry(gateway, stream)
        if seq != entry.control + 1:
            raise ValueError(f"{gateway}: control seq {seq} after {entry.control}")
        entry.control = seq
        self.alerts += 1

    def _entry(self, gateway: str, stream: str) -> GatewayRange:
        entry = self.gateways.setdefault(gateway, GatewayRange(stream))
        if entry.stream != stream:
            raise ValueError(f"{gateway}: stream {stream} after {entry.stream}")
        return entry

    @property
    def batches(self) -> int:
        return sum(g.telemetry for g in self.gateways.values())

    def keys(self) -> Iterator[BatchKey]:
        """Every key the ledger must hold."""
        for gw, g in self.gateways.items():
            yield from ((gw, g.stream, "telemetry", s) for s in range(1, g.telemetry + 1))
            yield from ((gw, g.stream, "control", s) for s in range(1, g.control + 1))

    def to_json(self) -> dict[str, Any]:
        return {"format": 1, "readings": self.readings, "checksum": f"{self.checksum:016x}",
                "alerts": self.alerts, "batches": self.batches, "sent": self.sent,
                "gateways": {gw: [g.stream, g.telemetry, g.control] for gw, g in sorted(self.gateways.items())}}

    @classmethod
    def from_json(cls, obj: Any) -> Manifest:
        """Raises ValueError on anything that is not a manifest this module wrote."""
        try:
            if obj["format"] != 1:
                raise ValueError(f"unknown manifest format {obj['format']!r}")
            gateways = {str(gw): GatewayRange(str(s), int(t), int(c)) for gw, (s, t, c) in obj["gateways"].items()}
            return cls(gateways, int(obj["readings"]), int(obj["checksum"], 16), int(obj["alerts"]),
                       dict(obj.get("sent", {})))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a fleet manifest: {exc!r}") from exc

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON: {exc}") from exc


@dataclass
class Observed:
    """What one or several stores hold, folded the same way as the manifest (see :mod:`.fleet_verify`)."""

    keys: Counter[BatchKey] = field(default_factory=Counter)
    readings: int = 0
    checksum: int = 0
    alerts: int = 0

    def add_reading_rows(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Rows of (gateway, stream, batch_seq, device, metric, ts_ms, value, value_text, seq)."""
        total, n = self.checksum, 0
        for gw, stream, batch_seq, device, metric, ts_ms, real, text, seq in rows:
            total += reading_hash(gw, stream, batch_seq, device, metric, ts_ms, stored_value_text(real, text), seq)
            n += 1
        self.checksum = total & MASK64
        self.readings += n


def compare(manifest: Manifest, observed: Observed) -> list[str]:
    """What differs between the manifest and the stores, one line each; empty when they match."""
    problems: list[str] = []
    expected = set(manifest.keys())
    missing = sum(1 for k in expected if k not in observed.keys)
    unexpected = sum(1 for k in observed.keys if k not in expected)
    twice = sum(1 for k, n in observed.keys.items() if n > 1)
    if missing:
        problems.append(f"{missing} of {len(expected)} batch keys missing from the ledger")
    if unexpected:
        problems.append(f"{unexpected} batch keys stored that the manifest does not name")
    if twice:
        problems.append(f"{twice} batch keys stored in more than one database")
    if observed.readings != manifest.readings:
        problems.append(f"readings: {observed.readings} stored, {manifest.readings} expected")
    if observed.checksum != manifest.checksum:
        problems.append(f"checksum: {observed.checksum:016x} stored, {manifest.checksum:016x} expected")
    if observed.alerts != manifest.alerts:
        problems.append(f"alerts: {observed.alerts} stored, {manifest.alerts} expected")
    return problems
