"""Typed configuration: TOML file -> pydantic models.

Unknown keys and bad values are rejected with the file, the dotted key and the reason
(:class:`gateway.errors.ConfigError`; the CLI exits 2). Units are part of key names. Secrets are
never written inline: they come from an environment variable (``*_env``) or a file (``*_file``)
and are resolved at load time, so a missing secret is a config error too.

The models are split by job: :mod:`gateway.config_types` (base model, secret references, value
checks), :mod:`gateway.config_broker` (``[local_broker]``), :mod:`gateway.config_sections` (the
other sections); this module holds the whole file's model, the pushed config and the loading, and
re-exports every model, so ``from gateway.config import ...`` reaches all of them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from gateway.config_broker import AclPattern, AclSection, AuthSection, ListenerTlsSection, LocalBrokerSection
from gateway.config_sections import (
    AlertSpec,
    BatchSection,
    BufferSection,
    ClockSection,
    DeadbandSpec,
    DecodeSection,
    DownlinkSection,
    FilesSection,
    GatewaySection,
    LaneBudget,
    LogSection,
    MetricsSection,
    Range,
    RuleSpec,
    StatusSection,
    TlsSection,
    TopicsSection,
    UplinkSection,
)
from gateway.config_types import (
    NonNegFloat,
    PositiveFloat,
    PositiveInt,
    Qos,
    SecretRef,
    Strict,
    is_loopback,
    split_host_port,
)
from gateway.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "MAX_CONFIG_VERSION", "AclPattern", "AclSection", "AlertSpec", "AuthSection", "BatchSection", "BufferSection",
    "ClockSection", "DeadbandSpec", "DecodeSection", "DownlinkSection", "FilesSection", "GatewayConfig",
    "GatewaySection",
    "LaneBudget", "ListenerTlsSection", "LocalBrokerSection", "LogSection", "MetricsSection", "NonNegFloat",
    "PositiveFloat", "PositiveInt", "PushedConfig", "Qos", "Range", "RuleSpec", "SecretRef", "Secrets",
    "StatusSection", "Strict", "TlsSection", "TopicsSection", "UplinkSection", "is_loopback", "load_config",
    "parse_config", "problems_of", "read_toml", "resolve_secrets", "split_host_port",
]


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
    files: FilesSection = FilesSection()

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
    def files_dir(self) -> Path:
        return self.files.dir or self.gateway.data_dir / "files"

    @property
    def outbox_dir(self) -> Path:
        return self.files.outbox_dir or self.files_dir / "outbox"

    @property
    def inbox_dir(self) -> Path:
        return self.files.inbox_dir or self.files_dir / "inbox"

    @property
    def pushed_config_file(self) -> Path:
        return self.downlink.config_file or self.gateway.data_dir / "pushed-config.json"

    @model_validator(mode="after")
    def _inbox_apart(self) -> GatewayConfig:
        """Downloads are renamed into the inbox under names the cloud chooses: it must not hold the
        gateway's own state (``uploads.db``, ``installed.json``, buffer segments...)."""
        if self.files.enabled:
            inbox_apart(self.inbox_dir, state={"gateway.data_dir": self.gateway.data_dir, "files.dir": self.files_dir,
                                               "buffer.dir": self.buffer_dir},
                        work={"files.outbox_dir": self.outbox_dir, "buffer.dir": self.buffer_dir,
                              "local_broker.auth.pki_dir": self.pki_dir,
                              **{f"{{files.dir}}/{d}": self.files_dir / d for d in ("incoming", "sending", "devices")}})
        return self

    def redacted(self) -> dict[str, Any]:
        """The effective config as plain data; secret references are shown, values never."""
        return self.model_dump(mode="json")


def inbox_apart(inbox: Path, *, state: dict[str, Path], work: dict[str, Path]) -> None:
    """``ValueError`` when ``inbox`` is, or holds, one of the ``state`` or ``work`` directories, or
    lies inside a ``work`` directory (where the gateway creates and deletes files of its own)."""
    where = inbox.resolve()
    for key, path in {**state, **work}.items():
        if path.resolve() == where or where in path.resolve().parents:
            raise ValueError(f"files.inbox_dir ({inbox}) must not be {key} ({path}) nor hold it: "
                             "a download could replace the gateway's own files")
    for key, path in work.items():
        if path.resolve() in where.parents:
            raise ValueError(f"files.inbox_dir ({inbox}) must not be inside {key} ({path})")


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
