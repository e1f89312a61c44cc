"""The embedded broker's listeners: addresses, the TLS listener's settings and the amqtt
``listeners`` config built from them."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import BrokerError


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int


@dataclass(frozen=True)
class ListenerTls:
    """A TLS listener: server certificate and key, the CA that signs client certificates."""

    host: str
    port: int
    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    require_client_cert: bool = False
    min_version: str = "1.2"

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if self.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
            if self.ca_file is not None:
                ctx.load_verify_locations(cafile=str(self.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise BrokerError(f"TLS listener: cannot load {self.cert_file} / {self.key_file} / {self.ca_file}: "
                              f"{exc}") from exc
        if self.ca_file is None:
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx.verify_mode = ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_OPTIONAL
        return ctx


@dataclass(frozen=True)
class Listeners:
    """The plain listener on ``host:port`` (if ``plain``) and the TLS listener (if ``tls``)."""

    host: str
    port: int
    plain: bool
    tls: ListenerTls | None
    max_connections: int

    def config(self) -> dict[str, dict[str, Any]]:
        """amqtt's ``listeners`` section; amqtt requires one named "default": the first one is."""
        out: dict[str, dict[str, Any]] = {}
        if self.plain:
            out["plain"] = {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": self.max_connections}
        tls = self.tls
        if tls is not None:
            out["tls"] = {"type": "tcp", "bind": f"{tls.host}:{tls.port}", "max_connections": self.max_connections,
                          "ssl": True, "certfile": str(tls.cert_file), "keyfile": str(tls.key_file)}
        if not out:
            raise BrokerError("the embedded broker needs a plain or a TLS listener")
        return {("default" if i == 0 else name): cfg for i, (name, cfg) in enumerate(out.items())}

    def name(self, kind: str) -> str:
        """amqtt's name of the ``"plain"`` or ``"tls"`` listener."""
        return "default" if (kind == "plain") == self.plain else kind

    def bind_text(self) -> str:
        binds = ([f"{self.host}:{self.port}"] if self.plain else []) + (
            [f"{self.tls.host}:{self.tls.port}"] if self.tls is not None else [])
        return " and ".join(binds)

    def config_keys(self) -> str:
        """The config keys that set these listeners (named when one cannot be opened)."""
        return " or ".join(k for k, on in (("local_broker.listen", self.plain),
                                           ("local_broker.tls.listen", self.tls is not None)) if on)
