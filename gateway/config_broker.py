"""The ``[local_broker]`` section: the embedded broker's listeners, authentication and ACL, or the
external broker the gateway reads from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from gateway.config_types import (
    PositiveFloat,
    PositiveInt,
    SecretRef,
    Strict,
    check_host_port,
    is_loopback,
    parse_url_value,
    split_host_port,
)


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

    _listen = field_validator("listen")(classmethod(lambda cls, v: check_host_port(v)))


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

    _listen = field_validator("listen")(classmethod(lambda cls, v: check_host_port(v)))

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parse_url_value(v)
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
