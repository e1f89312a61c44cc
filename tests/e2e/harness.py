"""End-to-end harness: a gateway service in-process on a free local port, real devices (MQTT
clients) publishing to it, and a raw cloud-side collector that records every envelope."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.mqtt.backoff import DecorrelatedJitter
from bridge.mqtt.connect import connect_with_backoff
from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.errors import UplinkStopped
from bridge.mqtt.types import ClientSettings, Message
from bridge.protocol.codec import Batch, decode_batch
from bridge.protocol.model import Reading
from bridge.protocol.records import decode_control
from gateway.config import GatewayConfig, Secrets, parse_config
from gateway.service import GatewayService

Section = Mapping[str, Any] | Sequence[Mapping[str, Any]]  # a config table, or an array of tables (rules)


def gateway_config(tmp: Path, cloud_url: str, protocol: str = "5", **sections: Section) -> GatewayConfig:
    """A gateway config in ``tmp`` sending to ``cloud_url``; each keyword is a config section (a table
    is merged into the default one, an array of tables such as ``rules`` replaces it)."""
    data: dict[str, Any] = {
        "gateway": {"id": "gw-test", "data_dir": str(tmp / "data")},
        "local_broker": {"listen": "127.0.0.1:0"},
        "uplink": {"urls": [cloud_url], "protocol": protocol, "backoff_base_s": 0.05, "backoff_cap_s": 0.5,
                   "keepalive_s": 5},
        "batch": {"max_count": 200, "max_age_s": 0.2},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, Mapping) else list(value)
    return parse_config(data, "<test>")


@asynccontextmanager
async def running_gateway(cfg: GatewayConfig) -> AsyncIterator[GatewayService]:
    svc = GatewayService(cfg, Secrets())
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    started = asyncio.ensure_future(svc.started.wait())
    await asyncio.wait({task, started}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield svc
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def local_url(svc: GatewayService) -> str:
    assert svc.embedded is not None
    a = svc.embedded.address
    return f"mqtt://{a.host}:{a.port}"


class Devices:
    """One real MQTT 3.1.1 client publishing on behalf of many device ids."""

    def __init__(self, conn: MqttConnection) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, url: str, client_id: str = "test-devices") -> Devices:
        return cls(await MqttConnection.open(url, ClientSettings(client_id=client_id, protocol="3.1.1",
                                                                  max_inflight=50)))

    async def publish_all(self, messages: Iterable[tuple[str, bytes]], qos: int = 1, window: int = 40) -> None:
        pending: list[asyncio.Future[None]] = []
        for topic, payload in messages:
            pending.append(self.conn.publish(topic, payload, qos))
            if len(pending) >= window:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)

    async def close(self) -> None:
        await self.conn.close()


def telemetry(device: str, seq: int, ts_ms: int, **metrics: float) -> tuple[str, bytes]:
    return f"devices/{device}/telemetry", json.dumps({"ts": ts_ms, "seq": seq, **metrics}).encode()


def device_seq(reading: Reading) -> int:
    """The device's seq of a reading that must carry one (every reading the test devices publish)."""
    assert reading.seq is not None, reading
    return reading.seq


@dataclass
class Collected:
    batches: list[Batch] = field(default_factory=list)  # every envelope received, duplicates included
    control: list[dict[str, Any]] = field(default_factory=list)
    status: list[bytes] = field(default_factory=list)

    def unique_batches(self) -> dict[int, Batch]:
        return {b.seq: b for b in self.batches}

    def readings(self) -> list[Reading]:
        return [r for b in sorted(self.unique_batches().values(), key=lambda b: b.seq) for r in b.readings]

    def unique_control(self) -> dict[int, dict[str, Any]]:
        return {c["seq"]: c for c in self.control}


class CloudCollector:
    """A real subscriber on the cloud broker with a persistent session (MQTT 5) that reconnects;
    ``on_batch`` is called with each telemetry batch as it arrives (after it is recorded)."""

    def __init__(self, url: str, prefix: str = "edge/gw-test", on_batch: Callable[[Batch], None] | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self._on_batch = on_batch
        self.data = Collected()
        self.connects = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _on(self, msg: Message) -> None:
        rel = msg.topic.removeprefix(self.prefix + "/")
        if rel == "telemetry":
            batch = decode_batch(msg.payload)
            self.data.batches.append(batch)
            if self._on_batch is not None:
                self._on_batch(batch)
        elif rel == "status":
            self.data.status.append(msg.payload)
        elif rel in {"stats", "config"} or rel.startswith("commands/"):
            return  # periodic stats, and what the cloud sends down
        else:
            self.data.control.append(decode_control(msg.payload))

    async def connect(self) -> None:
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(ready))
        await asyncio.wait_for(ready.wait(), 20)

    async def _run(self, ready: asyncio.Event) -> None:
        settings = ClientSettings(client_id="test-collector", protocol="5", clean_start=False, session_expiry_s=600)
        while not self._stop.is_set():
            try:
                conn = await connect_with_backoff([self.url], settings, DecorrelatedJitter(0.05, 0.3),
                                                  on_message=self._on, stop=self._stop)
            except UplinkStopped:
                return
            try:
                await conn.subscribe([(f"{self.prefix}/#", 1)])
                self.connects += 1
                ready.set()
                stopping = asyncio.ensure_future(self._stop.wait())
                closed = asyncio.ensure_future(conn.wait_closed())
                await asyncio.wait({stopping, closed}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                closed.cancel()
            finally:
                await conn.close()

    async def close(self) -> None:
        self._stop.set()
        if self._task:
            await self._task


class PacedDevices:
    """``devices`` device ids publishing one JSON reading each, ``rate_hz`` times a second, over one
    real MQTT 3.1.1 client that reconnects whenever the broker goes away (a gateway killed and
    restarted, say).

    A device's seq advances only when a PUBLISH was actually handed to the socket, so each device's
    published seqs are 1..n. A reading counts as accepted when its PUBACK arrives: ``acked`` maps
    device -> seq -> ``time.monotonic()`` when the PUBACK was handled on the event loop, and
    ``acked_on`` device -> seq -> the number (1-based) of the connection it went over, whose
    ``time.monotonic()`` start is ``connected_at[number - 1]``. Nothing is ever resent, so a reading the
    broker accepted and then lost is a gap in what reaches the cloud, never a duplicate. The pace is
    never caught up after a stall, so no device ever exceeds ``rate_hz``.
    """

    def __init__(self, url: str, devices: int, rate_hz: float, *, name: str = "dev",
                 client_id: str = "paced-devices", window: int = 200) -> None:
        self.url = url
        self.ids = [f"{name}-{d:03d}" for d in range(devices)]
        self.period_s = 1.0 / rate_hz
        self.client_id = client_id
        self.window = window
        self.published: dict[str, int] = dict.fromkeys(self.ids, 0)  # last seq handed to the socket
        self.acked: dict[str, dict[int, float]] = {d: {} for d in self.ids}
        self.acked_on: dict[str, dict[int, int]] = {d: {} for d in self.ids}
        self.connected_at: list[float] = []
        self.unacked = 0  # publishes that failed or lost their connection before the PUBACK
        self.skipped_ticks = 0  # ticks with no connection (nothing published, seqs not advanced)
        self.connects = 0
        self._pending: set[asyncio.Future[None]] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._t0_ms = 0

    @property
    def acked_total(self) -> int:
        return sum(len(a) for a in self.acked.values())

    @property
    def published_total(self) -> int:
        return sum(self.published.values())

    def start(self) -> None:
        import time

        self._t0_ms = int(time.time() * 1000)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop publishing, wait (at most 20 s) for the PUBACKs still outstanding, disconnect."""
        self._stop.set()
        if self._task is not None:
            await self._task

    def _settled(self, device: str, seq: int, connection: int, fut: asyncio.Future[None]) -> None:
        import time

        self._pending.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            self.unacked += 1
        else:
            self.acked[device][seq] = time.monotonic()
            self.acked_on[device][seq] = connection

    async def _connect(self) -> MqttConnection | None:
        from bridge.mqtt.errors import BridgeError

        try:
            conn = await MqttConnection.open(self.url, ClientSettings(
                client_id=self.client_id, protocol="3.1.1", max_inflight=self.window, connect_timeout_s=2.0))
        except BridgeError:
            return None
        import time

        self.connects += 1
        self.connected_at.append(time.monotonic())
        return conn

    async def _run(self) -> None:
        import contextlib
        import functools

        from bridge.mqtt.errors import BridgeError

        loop = asyncio.get_running_loop()
        conn: MqttConnection | None = None
        next_tick = loop.time()
        try:
            while not self._stop.is_set():
                if conn is None or conn.closed:
                    if conn is not None:
                        await conn.close()
                    conn = await self._connect()
                if conn is None:
                    self.skipped_ticks += 1
                else:
                    for device in self.ids:
                        seq = self.published[device] + 1
                        topic, payload = telemetry(device, seq, self._t0_ms + seq, v=float(seq % 1000))
                        try:
                            fut = conn.publish(topic, payload, 1)
                        except BridgeError:
                            break  # connection gone or window full: this device and the rest skip the tick
                        self.published[device] = seq
                        self._pending.add(fut)
                        fut.add_done_callback(functools.partial(self._settled, device, seq, self.connects))
                next_tick += self.period_s
                delay = next_tick - loop.time()
                if delay < 0:  # behind: never burst to catch up
                    next_tick, delay = loop.time(), 0.0
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            if conn is not None:
                if self._pending and not conn.closed:
                    await asyncio.wait(set(self._pending), timeout=20.0)
                await conn.close()
