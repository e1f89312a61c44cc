"""Test helpers for the device simulator: a real paho subscriber that records what the broker delivers."""

from __future__ import annotations

import json
import threading
import uuid
from collections import defaultdict
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device_sim.profiles import Profile
from device_sim.settings import BrokerSettings, DeviceSettings, RunSettings


class Collector:
    """A paho client subscribed to ``devices/#`` (QoS 1) on a real broker, recording every message.

    ``connect()`` does not wait for the SUBACK (the broker may run on the test's own event loop):
    wait for ``ready`` with ``eventually``.
    """

    def __init__(self, host: str, port: int, topic: str = "devices/#", *, username: str | None = None,
                 password: str | None = None) -> None:
        self.host, self.port, self.topic = host, port, topic
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def connect(self) -> None:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def ready(self) -> bool:
        return self._subscribed.is_set()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes | str) -> None:
        self.client.publish(topic, payload, qos=1)

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t == topic]

    def matching(self, prefix: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return [(t, p) for t, p in self.messages if t.startswith(prefix)]

    def telemetry(self, fmt: str = "json") -> dict[str, list[dict[str, Any]]]:
        """Decoded telemetry objects per device id (topic ``devices/{id}/telemetry``)."""
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        with self._lock:
            items = list(self.messages)
        for topic, payload in items:
            parts = topic.split("/")
            if len(parts) == 3 and parts[0] == "devices" and parts[2] == "telemetry":
                out[parts[1]].append(decode(payload, fmt))
        return out

    def responses(self, device_id: str) -> dict[Any, dict[str, Any]]:
        return {r["id"]: r for r in (json.loads(p) for p in self.on(f"devices/{device_id}/responses"))}


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
