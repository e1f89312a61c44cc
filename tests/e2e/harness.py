"""End-to-end harness: a gateway service in-process on a free local port, real devices (MQTT
clients) publishing to it, and a raw cloud-side collector that records every envelope."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.backoff import DecorrelatedJitter
from bridge.codec import decode_batch, decode_control
from bridge.connect import connect_with_backoff
from bridge.errors import UplinkStopped
from bridge.mqtt_types import ClientSettings, Message
from bridge.uplink import MqttConnection
from gateway.config import GatewayConfig, Secrets, parse_config
from gateway.service import GatewayService


def gateway_config(tmp: Path, cloud_url: str, protocol: str = "5", **sections: dict[str, Any]) -> GatewayConfig:
    data: dict[str, Any] = {
        "gateway": {"id": "gw-test", "data_dir": str(tmp / "data")},
        "local_broker": {"listen": "127.0.0.1:0"},
        "uplink": {"urls": [cloud_url], "protocol": protocol, "backoff_base_s": 0.05, "backoff_cap_s": 0.5,
                   "keepalive_s": 5},
        "batch": {"max_count": 200, "max_age_s": 0.2},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
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


@dataclass
class Collected:
    batches: list[Any] = field(default_factory=list)  # every envelope received, duplicates included
    control: list[dict[str, Any]] = field(default_factory=list)
    status: list[bytes] = field(default_factory=list)

    def unique_batches(self) -> dict[int, Any]:
        return {b.seq: b for b in self.batches}

    def readings(self) -> list[Any]:
        return [r for b in sorted(self.unique_batches().values(), key=lambda b: b.seq) for r in b.readings]

    def unique_control(self) -> dict[int, dict[str, Any]]:
        return {c["seq"]: c for c in self.control}


class CloudCollector:
    """A real subscriber on the cloud broker with a persistent session (MQTT 5) that reconnects."""

    def __init__(self, url: str, prefix: str = "edge/gw-test") -> None:
        self.url = url
        self.prefix = prefix
        self.data = Collected()
        self.connects = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _on(self, msg: Message) -> None:
        rel = msg.topic.removeprefix(self.prefix + "/")
        if rel == "telemetry":
            self.data.batches.append(decode_batch(msg.payload))
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
