"""Helpers for downlink tests: a cloud-side operator that sends commands and records the answers,
a local spy on ``devices/#``, and device-sim devices running in-process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import ClientSettings, Message
from bridge.protocol.records import decode_control
from device_sim.builtin_profiles import BUILTIN_PROFILES
from device_sim.runner import Runner
from device_sim.settings import BrokerSettings, DeviceSettings, RunSettings
from gateway.service import GatewayService
from tests.support import eventually


class CloudOperator:
    """A real MQTT client (5 unless told) on the cloud broker: publishes commands, collects ``responses``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.responses: list[dict[str, Any]] = []
        self.conn: MqttConnection

    @classmethod
    async def connect(cls, url: str, prefix: str = "edge/gw-test", protocol: Literal["5", "3.1.1"] = "5",
                      ) -> CloudOperator:
        op = cls(prefix)
        op.conn = await MqttConnection.open(url, ClientSettings(client_id="test-operator", protocol=protocol),
                                            on_message=op._on)
        await op.conn.subscribe([(f"{prefix}/responses", 1)])
        return op

    def _on(self, msg: Message) -> None:
        self.responses.append(decode_control(msg.payload))

    async def send(self, suffix: str, body: Any, retain: bool = False) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.conn.publish(f"{self.prefix}/commands/{suffix}", payload, 1, retain)

    def answers(self, cid: Any) -> list[dict[str, Any]]:
        return [r for r in self.responses if r.get("id") == cid]

    async def answer(self, cid: Any, timeout: float = 15.0) -> dict[str, Any]:
        await eventually(lambda: bool(self.answers(cid)), timeout=timeout,
                         message=lambda: f"answer to {cid!r}: {self.responses}")
        return self.answers(cid)[0]

    async def until_subscribed(self) -> None:
        """The gateway subscribes right after it connects: probe until a probe is answered."""
        seen = len(self.responses)
        for n in range(200):
            await self.send("probe", {"id": f"probe-{n}"})
            try:
                await eventually(lambda: any(str(r.get("id", "")).startswith("probe-") for r in self.responses[seen:]),
                                 timeout=0.25)
                return
            except AssertionError:
                continue
        raise AssertionError("the gateway never answered a probe command")

    async def close(self) -> None:
        await self.conn.close()


class LocalSpy:
    """A real MQTT 3.1.1 client on the gateway's local broker recording everything on ``devices/#``.
    Its wildcard subscription makes no device look connected; ``present`` device ids each get a
    second client subscribed to their own command topic (``devices/{id}/commands/+``), as the
    device itself would be."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.conn: MqttConnection | None = None
        self.devices: list[MqttConnection] = []

    @classmethod
    async def connect(cls, url: str, filters: str = "devices/#", present: tuple[str, ...] = ()) -> LocalSpy:
        spy = cls()
        spy.conn = await MqttConnection.open(url, ClientSettings(client_id="test-spy", protocol="3.1.1"),
                                             on_message=lambda m: spy.messages.append((m.topic, m.payload)))
        await spy.conn.subscribe([(filters, 1)])
        for device in present:
            conn = await MqttConnection.open(url, ClientSettings(client_id=f"test-{device}", protocol="3.1.1"))
            await conn.subscribe([(f"devices/{device}/commands/+", 1)])
            spy.devices.append(conn)
        return spy

    def topics(self, contains: str = "/commands") -> list[str]:
        return [t for t, _ in self.messages if contains in t]

    async def close(self) -> None:
        for conn in [*self.devices, *([self.conn] if self.conn is not None else [])]:
            await conn.close()


def local_broker_settings(svc: GatewayService) -> BrokerSettings:
    assert svc.embedded is not None
    a = svc.embedded.address
    return BrokerSettings(host=a.host, port=a.port)


@asynccontextmanager
async def sim_devices(svc: GatewayService, devices: int = 1, rate_hz: float = 2.0) -> AsyncIterator[Runner]:
    """device-sim devices ``dev-0001``... connected to the gateway's local broker, in-process."""
    runner = Runner(RunSettings(devices=devices, seed=1, profiles=(BUILTIN_PROFILES["room"],),
                                device=DeviceSettings(rate_hz=rate_hz, duration_s=600)),
                    local_broker_settings(svc))
    task = asyncio.get_running_loop().create_task(runner.run())
    await eventually(lambda: all(p.connected for p in runner.publishers) or task.done(), message="devices connected")
    assert not task.done()
    try:
        yield runner
    finally:
        runner.request_stop()
        await asyncio.wait_for(task, 30)
