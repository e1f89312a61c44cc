"""The config sections other than ``[local_broker]``: one model per TOML section (and the rule specs)."""

from __future__ import annotations

import datetime as dt
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from bridge.protocol.files import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, MAX_MANIFEST_BYTES, MIN_CHUNK_BYTES
from bridge.protocol.topics import DEFAULT_PREFIX, ID_RULE, TopicPattern, valid_id
from gateway.config_types import (
    NonNegFloat,
    PositiveFloat,
    PositiveInt,
    Qos,
    SecretRef,
    Strict,
    check_host_port,
    parse_url_value,
)
from gateway.process.clock import FLOOR_DATE


class GatewaySection(Strict):
    id: str = Field("gw-01", description="gateway id, part of every cloud topic")
    data_dir: Path = Path("./data")

    @field_validator("id")
    @classmethod
    def _valid_id(cls, v: str) -> str:
        if not valid_id(v):
            raise ValueError(f"must be {ID_RULE} (it becomes a topic level)")
        return v


class TopicsSection(Strict):
    """Local (device-side) topic patterns and the cloud prefix. ``{device_id}``, ``{metric}``,
    ``{name}``, ``{file_id}``, ``{index}`` and ``{gateway_id}`` are placeholders that match exactly
    one topic level."""

    telemetry: str = "devices/{device_id}/telemetry"
    telemetry_metric: str = "devices/{device_id}/telemetry/{metric}"
    events: str = "devices/{device_id}/events"
    responses: str = "devices/{device_id}/responses"
    commands: str = "devices/{device_id}/commands/{name}"
    # device file uploads (docs/OPERATIONS.md, "Device file uploads"): the device publishes the
    # manifest and the chunks, the gateway answers on the status topic
    file_manifest: str = "devices/{device_id}/files/{file_id}/manifest"
    file_chunk: str = "devices/{device_id}/files/{file_id}/chunk/{index}"
    file_status: str = "devices/{device_id}/files/{file_id}/status"
    cloud_prefix: str = DEFAULT_PREFIX

    @model_validator(mode="after")
    def _file_topics(self) -> TopicsSection:
        needs = {"file_manifest": {"device_id", "file_id"}, "file_chunk": {"device_id", "file_id", "index"},
                 "file_status": {"device_id", "file_id"}}
        for key, fields in needs.items():
            pattern = getattr(self, key)
            try:
                have = set(TopicPattern(pattern).fields)
            except ValueError as exc:
                raise ValueError(f"topics.{key}: {exc}") from None
            if not fields <= have:
                shown = ", ".join(f"{{{f}}}" for f in sorted(fields))
                raise ValueError(f"topics.{key} {pattern!r} must hold {shown}")
        if len({self.file_manifest, self.file_chunk, self.file_status}) != 3:
            raise ValueError("topics.file_manifest, file_chunk and file_status must differ")
        return self


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
    # while the uplink is down: batches may stay open this long (0 = max_age_s: off) and hold this
    # many readings (0 = max_count); fewer, larger records on disk, a longer loss window on power loss
    outage_max_age_s: NonNegFloat = 0.0
    outage_max_count: Annotated[int, Field(ge=0)] = 0
    compression: Literal["none", "zlib", "zstd"] = "zlib"
    level: Annotated[int, Field(ge=0, le=22)] = 6

    @field_validator("outage_max_age_s")
    @classmethod
    def _outage_age(cls, v: float, info: ValidationInfo) -> float:
        live = info.data.get("max_age_s")
        if isinstance(live, float) and 0 < v < live:
            raise ValueError(f"must be 0 (off) or at least batch.max_age_s ({live})")
        return v

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
            if parse_url_value(url).password is not None:
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
        return None if v is None else check_host_port(v)


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


class FilesSection(Strict):
    """File transfer (docs/OPERATIONS.md, "File transfer"): uploads from the outbox and from devices
    on the bulk lane, downloads from the cloud into the inbox."""

    enabled: bool = True
    dir: Path | None = None  # default {gateway.data_dir}/files: outbox/, sending/, incoming/, inbox/, state
    outbox_dir: Path | None = None  # default {files.dir}/outbox: drop files here (write, then rename in)
    inbox_dir: Path | None = None  # default {files.dir}/inbox: downloads are installed here
    chunk_bytes: Annotated[int, Field(ge=MIN_CHUNK_BYTES, le=MAX_CHUNK_BYTES)] = DEFAULT_CHUNK_BYTES
    max_file_bytes: PositiveInt = 256 * 1024 * 1024  # larger files are refused (counted: too_large)
    max_disk_bytes: PositiveInt = 1024 * 1024 * 1024  # all transfers on disk, apart from the telemetry buffer
    window: Annotated[int, Field(ge=1, le=32)] = 2  # chunks in flight on the bulk lane
    max_bytes_per_s: NonNegFloat = 0.0  # the bulk lane's own cap; 0 = none (the uplink's cap applies too)
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 20  # sends of one chunk (or the manifest) before it fails
    # a file whose manifest is larger is refused (too_large): set it below the cloud broker's packet limit
    max_manifest_bytes: Annotated[int, Field(ge=1024, le=MAX_MANIFEST_BYTES)] = MAX_MANIFEST_BYTES
    # a sent file waits this long for the receiver's "stored", then it is set aside (outbox/.rejected/, expired)
    keep_sent_s: Annotated[float, Field(ge=60)] = 86400.0
    rejected_keep: Annotated[int, Field(ge=1)] = 100  # files kept in outbox/.rejected/ (the newest; older are deleted)
    scan_interval_s: PositiveFloat = 1.0  # how often the outbox is looked at
    stall_s: PositiveFloat = 30.0  # a download that got no chunk this long asks for what it misses (doubling to 10 min)
    device_uploads: bool = True  # devices may send files on devices/{device_id}/files/...
    max_device_file_bytes: PositiveInt = 16 * 1024 * 1024
    device_upload_timeout_s: PositiveFloat = 3600.0  # a device upload idle this long is dropped (counted: expired)
    download_timeout_s: PositiveFloat = 7 * 86400.0  # a download without a chunk this long is dropped (failed: expired)
    max_device_files_per_hour: Annotated[int, Field(ge=0)] = 60  # per device, then `busy`; 0 = no limit


class StatusSection(Strict):
    # the status file `edge-gateway status` reads; default {gateway.data_dir}/status.json
    file: Path | None = None
    interval_s: float = Field(5.0, gt=0, le=3600)  # how often the gateway rewrites it


class LogSection(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
