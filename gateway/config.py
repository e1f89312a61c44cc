"""Typed configuration: TOML file -> pydantic models.

Unknown keys and bad values are rejected with the file, the dotted key and the reason
(:class:`gateway.errors.ConfigError`; the CLI exits 2). Units are part of key names. Secrets are
never written inline: they come from an environment variable (``*_env``) or a file (``*_file``)
and are resolved at load time, so a missing secret is a config error too.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import sys
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from bridge.mqtt.errors import InvalidUrl
from bridge.mqtt.urls import BrokerUrl, parse_broker_url
from bridge.protocol.topics import DEFAULT_PREFIX, ID_RULE, valid_id
from gateway.errors import ConfigError
from gateway.process.clock import FLOOR_DATE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Qos = Literal[0, 1]
_HOST_PORT = re.compile(r"^(?P<host>[^\s:]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SecretRef(Strict):
    """Where a secret comes from: exactly one of ``env`` or ``file`` (or neither: no secret)."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if self.env and self.file:
            raise ValueError("give either 'env' or 'file', not both")
        return self

    def resolve(self) -> SecretStr | None:
        if self.env:
            value = os.environ.get(self.env)
            if value is None:
                raise ValueError(f"environment variable {self.env} is not set")
            return SecretStr(value)
        if self.file:
            try:
                return SecretStr(self.file.read_text().strip())
            except OSError as exc:
                raise ValueError(f"cannot read secret file {self.file}: {exc.strerror}") from exc
        return None


def _check_host_port(value: str) -> str:
    m = _HOST_PORT.match(value)
    if not m or not 0 <= int(m["port"]) <= 65535:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:1883), got {value!r}")
    return value


def _url(value: str) -> BrokerUrl:
    try:
        return parse_broker_url(value)
    except InvalidUrl as exc:
        raise ValueError(str(exc)) from exc


def split_host_port(value: str) -> tuple[str, int]:
    m = _HOST_PORT.match(value)
    assert m is not None
    return m["host"].strip("[]"), int(m["port"])


class GatewaySection(Strict):
    id: str = Field("gw-01", description="gateway id, part of every cloud topic")
    data_dir: Path = Path("./data")

    @field_validator("id")
    @classmethod
    def _valid_id(cls, v: str) -> str:
        if not valid_id(v):
            raise ValueError(f"must be {ID_RULE} (it becomes a topic level)")
        return v


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_acl_pattern(value: str) -> str:
    from gateway.source.access import check_pattern

    return check_pattern(value)


AclPattern = Annotated[str, AfterValidator(_check_acl_pattern)]


class AclSection(Strict):
    """Topic filters with ``{device_id}``; unset = derived from ``[topics]``."""

    publish: list[AclPattern] | None = None
    subscribe: list[AclPattern] | None = None


class AuthSection(Strict):
    """Who may connect to the embedded broker and what each device may touch."""

    mode: Literal["none", "password", "certificate", "either", "both"] = "none"
    password_file: Path | None = None  # default {gateway.data_dir}/passwd
    pki_dir: Path | None = None  # default {gateway.data_dir}/pki (CA, server and device certs, revoked list)
    client_id: str = "{device_id}"
    max_denied_publishes: Annotated[int, Field(ge=0)] = 5
    reload_interval_s: PositiveFloat = 1.0
    allow_anonymous_lan: bool = False
    acl: AclSection = AclSection()

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str) -> str:
        if not v.startswith("{device_id}") or "{" in v.replace("{device_id}", "", 1):
            raise ValueError("must start with {device_id}, optionally followed by a glob such as '-*'")
        return v

    @property
    def passwords(self) -> bool:
        return self.mode in ("password", "either", "both")

    @property
    def certificates(self) -> bool:
        return self.mode in ("certificate", "either", "both")


class ListenerTlsSection(Strict):
    """A TLS listener of the embedded broker (TLS 1.2 or newer)."""

    listen: str = "0.0.0.0:8883"
    cert_file: Path | None = None  # default {pki_dir}/server.pem
    key_file: Path | None = None  # default {pki_dir}/server.key
    ca_file: Path | None = None  # CA for client certificates; default {pki_dir}/ca.pem
    require_client_cert: bool = False
    min_version: Literal["1.2", "1.3"] = "1.2"

    _listen = field_validator("listen")(classmethod(lambda cls, v: _check_host_port(v)))


class LocalBrokerSection(Strict):
    mode: Literal["embedded", "external"] = "embedded"
    listen: str = "127.0.0.1:1883"
    plain: bool = True  # false: no plain-TCP listener (only [local_broker.tls])
    tls: ListenerTlsSection | None = None
    auth: AuthSection = AuthSection()
    max_connections: int = Field(-1, ge=-1)
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: SecretRef = SecretRef()
    client_id: str | None = None
    ingest_queue_max: PositiveInt = 20000

    _listen = field_validator("listen")(classmethod(lambda cls, v: _check_host_port(v)))

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        _url(v)
        return v

    @property
    def listeners(self) -> list[str]:
        """``HOST:PORT`` of every listener the embedded broker opens."""
        return ([self.listen] if self.plain else []) + ([self.tls.listen] if self.tls else [])

    @model_validator(mode="after")
    def _secure(self) -> LocalBrokerSection:
        if self.mode != "embedded":
            return self
        if self.username is not None or self.password != SecretRef():
            raise ValueError("local_broker.username/password are the gateway's credentials on an external broker "
                             "(mode = 'external'); devices of the embedded broker are set up with "
                             "'edge-gateway devices add' ([local_broker.auth])")
        if not self.listeners:
            raise ValueError("local_broker.plain = false needs a [local_broker.tls] listener")
        exposed = [lst for lst in self.listeners if not is_loopback(split_host_port(lst)[0])]
        if self.auth.mode == "none" and exposed and not self.auth.allow_anonymous_lan:
            raise ValueError(f"local_broker.auth.mode = 'none' (anyone may connect and act as any device) is only "
                             f"allowed on loopback listeners, but {', '.join(exposed)} is reachable from the network: "
                             f"set local_broker.auth.mode = 'password' (see docs/SECURITY.md), or "
                             f"local_broker.auth.allow_anonymous_lan = true for a closed lab")
        if self.auth.certificates and self.tls is None:
            raise ValueError(f"local_broker.auth.mode = {self.auth.mode!r} needs a [local_broker.tls] listener")
        if self.auth.mode in ("certificate", "both") and self.tls is not None and self.plain:
            raise ValueError(f"local_broker.auth.mode = {self.auth.mode!r}: devices on the plain listener could not "
                             f"present a certificate; set local_broker.plain = false")
        return self


class TopicsSection(Strict):
    """Local (device-side) topic patterns and the cloud prefix. ``{device_id}``, ``{metric}``,
    ``{name}`` and ``{gateway_id}`` are placeholders that match exactly one topic level."""

    telemetry: str = "devices/{device_id}/telemetry"
    telemetry_metric: str = "devices/{device_id}/telemetry/{metric}"
    events: str = "devices/{device_id}/events"
    responses: str = "devices/{device_id}/responses"
    commands: str = "devices/{device_id}/commands/{name}"
    cloud_prefix: str = DEFAULT_PREFIX


class DecodeSection(Strict):
    max_payload_bytes: PositiveInt = 65536
    max_metrics_per_message: PositiveInt = 256
    max_future_s: NonNegFloat = 300.0
    max_past_s: NonNegFloat = 7 * 86400.0
    out_of_window: Literal["reject", "clamp"] = "reject"
    keep_last_rejects: int = Field(20, ge=0, le=1000)


class ClockSection(Strict):
    """When the wall clock counts as synced (see gateway.process.clock)."""

    floor_date: dt.date = FLOOR_DATE  # a wall clock before this date is not synced yet
    jump_s: float = Field(60.0, gt=0)  # a wall-clock step larger than this against the monotonic clock is counted
    sync_file: str | None = None  # e.g. "/run/systemd/timesync/synchronized": unsynced until it exists


class Range(Strict):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class AlertSpec(Range):
    hysteresis: NonNegFloat = 0.0


class DeadbandSpec(Strict):
    abs: NonNegFloat = 0.0
    pct: NonNegFloat = 0.0
    max_silence_s: PositiveFloat = 300.0


class RuleSpec(Strict):
    """One rule; the first rule whose ``devices`` and ``metrics`` globs match a reading applies."""

    name: str = ""
    devices: str = "*"
    metrics: str = "*"
    valid: Range | None = None
    alert: AlertSpec | None = None
    deadband: DeadbandSpec | None = None
    sample_every_s: NonNegFloat = 0.0

    def matches(self, device: str, metric: str) -> bool:
        return fnmatchcase(device, self.devices) and fnmatchcase(metric, self.metrics)


class BatchSection(Strict):
    max_count: PositiveInt = 1000
    max_bytes: Annotated[int, Field(ge=1024)] = 65536
    max_age_s: PositiveFloat = 5.0
    compression: Literal["none", "zlib", "zstd"] = "zlib"
    level: Annotated[int, Field(ge=0, le=22)] = 6

    @model_validator(mode="after")
    def _zstd(self) -> BatchSection:
        from bridge.protocol.codec import zstd_available

        if self.compression == "zstd" and not zstd_available():
            raise ValueError("compression 'zstd' needs the zstandard package (pip install edge-mqtt-gateway[zstd])")
        return self


class LaneBudget(Strict):
    max_bytes: PositiveInt
    max_age_s: NonNegFloat = 0.0  # 0 = no age limit


class BufferSection(Strict):
    dir: Path | None = None  # default: {gateway.data_dir}/buffer
    telemetry: LaneBudget = LaneBudget(max_bytes=256 * 1024 * 1024, max_age_s=7 * 86400.0)
    control: LaneBudget = LaneBudget(max_bytes=16 * 1024 * 1024, max_age_s=0.0)
    sync: Literal["full", "normal"] = "full"
    min_free_bytes: Annotated[int, Field(ge=0)] = 64 * 1024 * 1024
    write_behind_s: Annotated[float, Field(ge=0, le=60)] = 0.0


class TlsSection(Strict):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: SecretRef = SecretRef()
    insecure: bool = False


class UplinkSection(Strict):
    urls: list[str] = Field(default_factory=lambda: ["mqtt://127.0.0.1:1884"], min_length=1)
    client_id: str | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: Annotated[int, Field(ge=2, le=65535)] = 30
    connect_timeout_s: PositiveFloat = 10.0
    username: str | None = None
    password: SecretRef = SecretRef()
    tls: TlsSection | None = None
    telemetry_qos: Qos = 1
    control_qos: Qos = 1
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 20
    control_max_inflight: Annotated[int, Field(ge=1, le=100)] = 10
    ack_timeout_s: PositiveFloat = 60.0

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_number(cls, value: Any) -> Any:
        """``protocol = 5`` (a TOML integer) means "5"."""
        return "5" if value == 5 and not isinstance(value, bool) else value

    backlog_per_live: Annotated[int, Field(ge=1, le=1000)] = 4
    drain_max_loop_lag_ms: NonNegFloat = 1.0
    max_bytes_per_s: NonNegFloat = 0.0
    backoff_base_s: PositiveFloat = 0.5
    backoff_cap_s: PositiveFloat = 30.0
    stats_interval_s: PositiveFloat = 60.0

    @field_validator("urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if _url(url).password is not None:
                raise ValueError("put the password in uplink.password (env or file), not in the URL")
        return v


class MetricsSection(Strict):
    listen: str | None = None  # e.g. "127.0.0.1:9464"; unset = no HTTP endpoint
    refresh_s: float = Field(1.0, gt=0, le=60)  # how often the loop rebuilds the snapshot the endpoint serves
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    basic_auth_username: str | None = None
    basic_auth_password: SecretRef = SecretRef()

    @model_validator(mode="after")
    def _pairs(self) -> MetricsSection:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("metrics.tls_cert_file and metrics.tls_key_file go together")
        if (self.basic_auth_username is None) != (self.basic_auth_password == SecretRef()):
            raise ValueError("metrics.basic_auth_username and metrics.basic_auth_password go together")
        return self

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        return None if v is None else _check_host_port(v)


class DownlinkSection(Strict):
    """Cloud -> gateway messages: commands for devices and pushed config."""

    commands: bool = True  # subscribe to edge/{gw}/commands/# and forward to devices
    allowed_commands: list[str] = Field(default_factory=lambda: ["ping", "set_rate", "set_setpoint", "reboot"])
    max_command_bytes: Annotated[int, Field(ge=64, le=1024 * 1024)] = 4096
    hold_offline_s: NonNegFloat = 30.0  # 0 = answer undeliverable at once
    max_held: PositiveInt = 1000
    track_responses_s: PositiveFloat = 300.0
    config_push: bool = True  # subscribe to edge/{gw}/config and apply pushed documents
    config_file: Path | None = None  # last applied push; default {gateway.data_dir}/pushed-config.json

    @field_validator("allowed_commands")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if name != "*" and not valid_id(name):
                raise ValueError(f"{name[:64]!r}: a command name must be {ID_RULE} (or '*')")
        return v


class StatusSection(Strict):
    # the status file `edge-gateway status` reads; default {gateway.data_dir}/status.json
    file: Path | None = None
    interval_s: float = Field(5.0, gt=0, le=3600)  # how often the gateway rewrites it


class LogSection(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"


class GatewayConfig(Strict):
    gateway: GatewaySection = GatewaySection()
    local_broker: LocalBrokerSection = LocalBrokerSection()
    topics: TopicsSection = TopicsSection()
    decode: DecodeSection = DecodeSection()
    rules: list[RuleSpec] = Field(default_factory=list)
    batch: BatchSection = BatchSection()
    buffer: BufferSection = BufferSection()
    uplink: UplinkSection = UplinkSection()
    metrics: MetricsSection = MetricsSection()
    downlink: DownlinkSection = DownlinkSection()
    log: LogSection = LogSection()
    status: StatusSection = StatusSection()
    clock: ClockSection = ClockSection()

    @property
    def buffer_dir(self) -> Path:
        return self.buffer.dir or self.gateway.data_dir / "buffer"

    @property
    def status_file(self) -> Path:
        return self.status.file or self.gateway.data_dir / "status.json"

    @property
    def password_file(self) -> Path:
        return self.local_broker.auth.password_file or self.gateway.data_dir / "passwd"

    @property
    def pki_dir(self) -> Path:
        return self.local_broker.auth.pki_dir or self.gateway.data_dir / "pki"

    @property
    def pushed_config_file(self) -> Path:
        return self.downlink.config_file or self.gateway.data_dir / "pushed-config.json"

    def redacted(self) -> dict[str, Any]:
        """The effective config as plain data; secret references are shown, values never."""
        return self.model_dump(mode="json")


# Versions stay exact in JSON consumers that read numbers as doubles.
MAX_CONFIG_VERSION = 2**53 - 1


class PushedConfig(Strict):
    """A config document pushed from the cloud on ``edge/{gw}/config``.

    ``rules`` and ``batch`` use the same models as the file config. A section that is present
    replaces the file config's section as a whole; a section that is left out means "as in the
    file config". So a document with only ``version`` puts the file config back in force.
    """

    version: Annotated[int, Field(gt=0, le=MAX_CONFIG_VERSION, strict=True)]
    rules: list[RuleSpec] | None = None
    batch: BatchSection | None = None


class Secrets(BaseModel):
    """Secrets resolved from their references at load time."""

    model_config = ConfigDict(frozen=True)
    uplink_password: SecretStr | None = None
    tls_key_password: SecretStr | None = None
    local_password: SecretStr | None = None
    metrics_password: SecretStr | None = None


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def problems_of(exc: ValidationError) -> list[tuple[str, str]]:
    return [(_loc(tuple(e["loc"])), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]


def parse_config(data: dict[str, Any], source: str) -> GatewayConfig:
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, problems_of(exc)) from exc


def resolve_secrets(cfg: GatewayConfig, source: str) -> Secrets:
    refs = {
        "uplink.password": cfg.uplink.password,
        "uplink.tls.key_password": cfg.uplink.tls.key_password if cfg.uplink.tls else SecretRef(),
        "local_broker.password": cfg.local_broker.password,
        "metrics.basic_auth_password": cfg.metrics.basic_auth_password,
    }
    values: dict[str, SecretStr | None] = {}
    problems: list[tuple[str, str]] = []
    for key, ref in refs.items():
        try:
            values[key] = ref.resolve()
        except ValueError as exc:
            problems.append((key, str(exc)))
    if problems:
        raise ConfigError(source, problems)
    return Secrets(
        uplink_password=values["uplink.password"],
        tls_key_password=values["uplink.tls.key_password"],
        local_password=values["local_broker.password"],
        metrics_password=values["metrics.basic_auth_password"],
    )


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file into plain data. Raises :class:`ConfigError` naming ``(file)`` or ``(syntax)``."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [("(file)", exc.strerror or str(exc))]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [("(file)", f"not UTF-8 text: {exc}")]) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [("(syntax)", str(exc))]) from exc


def load_config(path: str | Path) -> tuple[GatewayConfig, Secrets]:
    """Read, validate and resolve a TOML config file. Raises :class:`ConfigError`."""
    source = str(path)
    cfg = parse_config(read_toml(path), source)
    return cfg, resolve_secrets(cfg, source)
