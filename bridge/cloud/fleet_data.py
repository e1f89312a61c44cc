"""The fleet load generator's data (pure, seeded): virtual gateways with devices whose sensors vary
slowly, producing uplink messages exactly as a real gateway encodes them.

Each :class:`VirtualGateway` has a gateway id (``gw-0001``), a random stream id (16 hex digits, as
``gateway/store/stream.py`` makes them), a telemetry seq and a control seq counter, like a gateway's
buffer. Its devices sample every ``period_ms``: a temperature, humidity and pressure random walk
at a sensor's resolution, and an integer counter; each device message carries the device's own seq.
Telemetry batches are version-2 envelopes from :func:`bridge.protocol.codec.encode_batch` (zlib,
the gateway's default compression), alerts are control records from
:func:`bridge.protocol.records.encode_control`, on the topics of
:class:`bridge.protocol.topics.CloudTopics`.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from bridge.cloud.fleet_manifest import Manifest
from bridge.protocol.codec import Compression, encode_batch, set_replay
from bridge.protocol.model import Lane, Reading
from bridge.protocol.records import Alert, Stamp, encode_control
from bridge.protocol.topics import DEFAULT_PREFIX, CloudTopics

METRICS = ("temperature", "humidity", "pressure", "energy_wh")
BATCH_LAG_MS = 250  # a batch is closed this long after its last reading (the batcher's age)


@dataclass(frozen=True)
class Message:
    """One uplink message of a virtual gateway, and the key that names it."""

    topic: str
    payload: bytes
    gateway: str
    stream: str
    lane: Lane
    seq: int
    readings: tuple[Reading, ...] = ()


class SensorDevice:
    """One device: slowly varying sensors, sampled every ``period_ms`` with its own phase."""

    def __init__(self, device_id: str, rng: random.Random, start_ms: int, period_ms: int) -> None:
        self.id = device_id
        self._rng = rng
        self._period_ms = period_ms
        self._next_ms = start_ms + rng.randrange(period_ms)
        self.seq = 0
        self.temperature = round(rng.uniform(15.0, 28.0), 2)
        self.humidity = round(rng.uniform(30.0, 70.0), 1)
        self.pressure = round(rng.uniform(990.0, 1030.0), 2)
        self.energy = float(rng.randrange(1_000_000))

    def sample(self) -> list[Reading]:
        """The next message of this device: one reading per metric, one timestamp, one device seq."""
        rng = self._rng
        self.temperature = round(min(45.0, max(-10.0, self.temperature + rng.gauss(0.0, 0.05))), 2)
        self.humidity = round(min(100.0, max(0.0, self.humidity + rng.gauss(0.0, 0.2))), 1)
        self.pressure = round(self.pressure + rng.gauss(0.0, 0.02), 2)
        self.energy += rng.randrange(4)
        self.seq += 1
        ts, self._next_ms = self._next_ms, self._next_ms + self._period_ms
        values = (self.temperature, self.humidity, self.pressure, self.energy)
        return [Reading(self.id, m, ts, v, self.seq) for m, v in zip(METRICS, values, strict=True)]

    @property
    def next_ms(self) -> int:
        return self._next_ms


class VirtualGateway:
    """A gateway's uplink without the gateway: its devices' readings, batched and numbered."""

    def __init__(self, index: int, rng: random.Random, *, devices: int, start_ms: int, period_ms: int = 1000,
                 prefix: str = DEFAULT_PREFIX, compression: Compression = "zlib", stream: str | None = None) -> None:
        self.id = f"gw-{index:04d}"
        self.stream = f"{rng.getrandbits(64):016x}" if stream is None else stream
        self.topics = CloudTopics(self.id, prefix)
        self._telemetry_topic = self.topics.telemetry
        self._rng = rng
        self._compression: Compression = compression
        self.devices = [SensorDevice(f"{self.id}-dev-{d:03d}", rng, start_ms, period_ms) for d in range(devices)]
        self.telemetry_seq = 0
        self.control_seq = 0
        self._pending: list[Reading] = []

    def _readings(self, n: int) -> list[Reading]:
        """The next ``n`` readings in time order across the devices (whole device messages are
        split across batches when ``n`` says so, as the batcher's count limit does)."""
        while len(self._pending) < n:
            device = min(self.devices, key=lambda d: d.next_ms)
            self._pending.extend(device.sample())
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    def next_batch(self, readings: int) -> Message:
        """The next telemetry batch of ``readings`` readings, encoded, with the next seq."""
        chunk = self._readings(readings)
        self.telemetry_seq += 1
        payload = encode_batch(self.id, self.telemetry_seq, chunk, stream=self.stream,
                               created_ms=chunk[-1].ts_ms + BATCH_LAG_MS, compression=self._compression)
        return Message(self._telemetry_topic, payload, self.id, self.stream, "telemetry", self.telemetry_seq,
                       tuple(chunk))

    def next_alert(self) -> Message:
        """An alert of one of its devices on its current temperature, with the next control seq."""
        device = self._rng.choice(self.devices)
        raised = self._rng.random() < 0.5
        threshold = round(device.temperature + (-0.5 if raised else 0.5), 1)
        alert = Alert(device.id, "temperature", "max", "raised" if raised else "cleared", device.temperature,
                      threshold, device.next_ms, "temperature-high")
        self.control_seq += 1
        payload = encode_control(alert, Stamp(self.id, self.control_seq, self.stream))
        return Message(self.topics.alerts, payload, self.id, self.stream, "control", self.control_seq)


def fleet(gateways: int, devices_per_gateway: int, *, seed: int, start_ms: int, period_ms: int = 1000,
          prefix: str = DEFAULT_PREFIX, streams: random.Random | None = None) -> list[VirtualGateway]:
    """``gateways`` virtual gateways (``gw-0001`` ...), each seeded from ``seed`` and its index. Their
    stream ids come from ``streams`` when given (a new run is then a new stream, as a gateway whose
    buffer was wiped starts one), else from the seed too."""
    return [VirtualGateway(i, random.Random(f"{seed}:{i}"), devices=devices_per_gateway, start_ms=start_ms,
                           period_ms=period_ms, prefix=prefix,
                           stream=None if streams is None else f"{streams.getrandbits(64):016x}")
            for i in range(1, gateways + 1)]


SendKind = Literal["batch", "alert", "duplicate", "replay", "backlog"]
BACKLOG_DRAIN = 16  # held-back batches are sent once this many are waiting


@dataclass(frozen=True)
class Send:
    """One publish: a new message, or an earlier one sent again (``duplicate``: unchanged;
    ``replay``: a telemetry batch with the replay flag set, as a gateway re-sends a batch whose
    PUBACK it never saw), or a new batch that was held back (``backlog``: sent late, flagged replay,
    as a gateway drains what it buffered during an outage)."""

    message: Message
    payload: bytes
    kind: SendKind


class Plan:
    """What the fleet sends, in order, and the manifest of what a sink must end with.

    Gateways take turns; each turn one gateway makes its next batch and sends it, or, with
    probability ``backlog``, holds it back: held batches go out flagged replay, out of seq order,
    once :data:`BACKLOG_DRAIN` are waiting (and at the end: :meth:`rest`). Then, each with its own
    probability, one of its devices raises an alert, an earlier message (of any gateway, among the
    last ``history``) is sent again unchanged, and an earlier batch is sent again flagged replay.
    Re-sent messages keep their key, so they never change the manifest.
    """

    def __init__(self, gateways: list[VirtualGateway], rng: random.Random, *, batch_readings: int,
                 duplicates: float = 0.0, replays: float = 0.0, alerts: float = 0.0, backlog: float = 0.0,
                 history: int = 4096) -> None:
        if batch_readings < 1:
            raise ValueError("batch_readings must be at least 1")
        for name, p in (("duplicates", duplicates), ("replays", replays), ("alerts", alerts), ("backlog", backlog)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability (0 to 1), not {p}")
        self.gateways = gateways
        self.manifest = Manifest()
        self.counts: Counter[SendKind] = Counter()
        self._rng = rng
        self._batch_readings = batch_readings
        self._p = (duplicates, replays, alerts, backlog)
        self._sent: deque[Message] = deque(maxlen=history)
        self._batches: deque[Message] = deque(maxlen=history)
        self._held: list[Message] = []

    def __iter__(self) -> Iterator[Send]:
        return self.sends()

    def sends(self, batches: int | None = None) -> Iterator[Send]:
        """The sends, forever or until ``batches`` new batches were made and sent."""
        rng = self._rng
        duplicates, replays, alerts, backlog = self._p
        while True:
            for gw in self.gateways:
                if batches is not None and self.manifest.batches >= batches:
                    yield from self.rest()
                    return
                batch = gw.next_batch(self._batch_readings)
                self.manifest.add_batch(gw.id, gw.stream, batch.seq, list(batch.readings))
                if backlog and rng.random() < backlog:
                    self._held.append(batch)
                    if len(self._held) >= BACKLOG_DRAIN:
                        yield from self.rest()
                else:
                    yield self._send(batch, batch.payload, "batch")
                if alerts and rng.random() < alerts:
                    alert = gw.next_alert()
                    self.manifest.add_control(gw.id, gw.stream, alert.seq)
                    yield self._send(alert, alert.payload, "alert")
                if duplicates and self._sent and rng.random() < duplicates:
                    again = rng.choice(self._sent)
                    yield self._send(again, again.payload, "duplicate")
                if replays and self._batches and rng.random() < replays:
                    old = rng.choice(self._batches)
                    yield self._send(old, set_replay(old.payload), "replay")

    def rest(self) -> Iterator[Send]:
        """The held-back batches, flagged replay: send them before ending a run."""
        while self._held:  # one at a time: a run may stop in the middle, and call this again
            batch = self._held.pop(0)
            yield self._send(batch, set_replay(batch.payload), "backlog")

    def _send(self, message: Message, payload: bytes, kind: SendKind) -> Send:
        self.counts[kind] += 1
        if kind in ("batch", "alert", "backlog"):
            self._sent.append(message)
            if kind != "alert":
                self._batches.append(message)
        return Send(message, payload, kind)
