"""Test helpers for the device simulator: what a recording client saw devices publish, and settings."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import msgpack

from device_sim.profiles import Profile
from device_sim.settings import BrokerSettings, DeviceSettings, RunSettings
from tests.support import RecordingClient


def device_telemetry(client: RecordingClient, fmt: str = "json") -> dict[str, list[dict[str, Any]]]:
    """Decoded telemetry objects per device id (topic ``devices/{id}/telemetry``) ``client`` received."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for topic, payload in client.matching("devices/"):
        parts = topic.split("/")
        if len(parts) == 3 and parts[2] == "telemetry":
            out[parts[1]].append(decode(payload, fmt))
    return out


def device_responses(client: RecordingClient, device_id: str) -> dict[Any, dict[str, Any]]:
    """The responses ``client`` received from ``device_id``, by command id."""
    return {r["id"]: r for r in (json.loads(p) for p in client.on(f"devices/{device_id}/responses"))}


async def devices_watcher(host: str, port: int) -> RecordingClient:
    """A client subscribed to ``devices/#`` (QoS 1), recording everything devices publish."""
    client = await RecordingClient(port, host=host).start().connected()
    assert await client.subscribe("devices/#") == [1]
    return client


def decode(payload: bytes, fmt: str) -> dict[str, Any]:
    if fmt == "msgpack":
        result: dict[str, Any] = msgpack.unpackb(payload, raw=False)
        return result
    loaded: dict[str, Any] = json.loads(payload)
    return loaded


def seqs_by_device(telemetry: dict[str, list[dict[str, Any]]]) -> dict[str, list[int]]:
    return {device: [m["seq"] for m in msgs] for device, msgs in telemetry.items()}


def run_settings(profile: Profile, *, devices: int = 2, seed: int | None = 1, shared: bool = False,
                 drain_timeout_s: float = 10.0, **device: Any) -> RunSettings:
    device.setdefault("rate_hz", 50.0)
    return RunSettings(devices=devices, seed=seed, profiles=(profile,), shared_connection=shared,
                       drain_timeout_s=drain_timeout_s, device=DeviceSettings(**device))


def broker_at(host: str, port: int, **kw: Any) -> BrokerSettings:
    return BrokerSettings(host=host, port=port, **kw)
