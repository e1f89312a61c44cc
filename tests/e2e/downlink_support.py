"""Helpers for downlink tests: a cloud-side operator that sends commands and records the answers,
a local spy on ``devices/#``, and device-sim devices running in-process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal
from urllib.parse import urlsplit

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import ClientSettings, Message
from bridge.protocol.records import decode_control
from device_sim.builtin_profiles import BUILTIN_PROFILES
from device_sim.runner import Runner
from device_sim.settings import BrokerSettings, DeviceSettings, RunSettings
from gateway.service import GatewayService
from tests.support import RecordingClient, eventually


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

    def probes_answered(self) -> int:
        """How many probes the gateway answered (each is a ``bad_topic`` rejection). Exact once an
        answer to a later command has arrived: the gateway answers in order, on one topic."""
        return sum(1 for r in self.responses if str(r.get("id", "")).startswith("probe-"))

    async def close(self) -> None:
        await self.conn.close()


class LocalSpy:
    """A recording client on the gateway's local broker, subscribed to ``devices/#``. Its wildcard
    subscription makes no device look connected; ``present`` device ids each get a second client
    subscribed to their own command topic (``devices/{id}/commands/+``), as the device itself would be."""

    def __init__(self, watcher: RecordingClient, devices: list[RecordingClient]) -> None:
        self.watcher = watcher
        self.devices = devices

    @classmethod
    async def connect(cls, url: str, filters: str = "devices/#", present: tuple[str, ...] = ()) -> LocalSpy:
        where = urlsplit(url)
        assert where.hostname is not None and where.port is not None, url
        watcher = await RecordingClient(where.port, "test-spy", host=where.hostname).start().connected()
        await watcher.subscribe(filters)
        devices = []
        for device in present:
            client = await RecordingClient(where.port, f"test-{device}", host=where.hostname).start().connected()
            await client.subscribe(f"devices/{device}/commands/+")
            devices.append(client)
        return cls(watcher, devices)

    @property
    def messages(self) -> list[tuple[str, bytes]]:
        return self.watcher.matching("")

    def topics(self, contains: str = "/commands") -> list[str]:
        return [t for t in self.watcher.topics() if contains in t]

    async def close(self) -> None:
        for client in [*self.devices, self.watcher]:
            await asyncio.to_thread(client.stop)


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
