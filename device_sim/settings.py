"""Plain settings objects shared by the publisher, the devices and the runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from device_sim.credentials import Credentials
from device_sim.payloads import Format
from device_sim.profiles import Profile
from device_sim.topics import DEFAULT_TEMPLATE

MqttVersion = Literal["3.1.1", "5"]


@dataclass(frozen=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    credentials: Credentials = field(default_factory=Credentials)
    tls: bool = False
    cafile: str | None = None
    insecure: bool = False
    mqtt_version: MqttVersion = "3.1.1"
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class DeviceSettings:
    """How every simulated device behaves."""

    rate_hz: float = 1.0
    qos: int = 1
    fmt: Format = "json"
    one_metric_per_message: bool = False
    topic_template: str = DEFAULT_TEMPLATE
    jitter: float = 0.0
    count: int | None = None
    duration_s: float | None = None
    backlog: int = 1000
    inflight: int = 10
    reboot_pause_s: float = 2.0
    max_rate_hz: float = 1000.0


@dataclass(frozen=True)
class RunSettings:
    devices: int = 1
    id_prefix: str = "dev-"
    seed: int | None = None
    profiles: tuple[Profile, ...] = field(default_factory=tuple)
    shared_connection: bool = False
    drain_timeout_s: float = 10.0
    connect_concurrency: int = 32
    device: DeviceSettings = field(default_factory=DeviceSettings)
