"""Broker URLs: ``mqtt://[user[:password]@]host[:port]`` and ``mqtts://...`` (TLS).

``tcp://`` and ``ssl://`` are accepted as aliases of ``mqtt://`` and ``mqtts://``. The default
ports are 1883 and 8883. User name and password come from the userinfo part, percent-decoded, so a
password containing ``@`` or ``:`` must be written ``%40`` / ``%3A``. The password never appears in
``str()`` or ``repr()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

from bridge.mqtt.errors import InvalidUrl

Scheme = Literal["mqtt", "mqtts"]

_SCHEMES: dict[str, Scheme] = {"mqtt": "mqtt", "tcp": "mqtt", "mqtts": "mqtts", "ssl": "mqtts"}
DEFAULT_PORTS: dict[Scheme, int] = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class BrokerUrl:
    """A parsed broker address. ``tls`` is true for ``mqtts``."""

    scheme: Scheme
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        userinfo = ""
        if self.username is not None:
            userinfo = quote(self.username, safe="")
            if self.password is not None:
                userinfo += ":***"
            userinfo += "@"
        return f"{self.scheme}://{userinfo}{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerUrl:
    """Parse ``url`` into a :class:`BrokerUrl`; raise :class:`InvalidUrl` saying what is wrong."""
    text = url.strip()
    if "://" not in text:
        raise InvalidUrl(f"broker url {_safe(text)!r} has no scheme: write mqtt://host:port or mqtts://host")
    try:
        parts = urlsplit(text)
    except ValueError as err:
        raise InvalidUrl(f"broker url {_safe(text)!r} is malformed: {err}") from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise InvalidUrl(
            f"broker url {_safe(text)!r}: unknown scheme {parts.scheme!r} (use mqtt, mqtts, tcp or ssl)"
        )
    host = parts.hostname
    if not host:
        raise InvalidUrl(f"broker url {_safe(text)!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise InvalidUrl(f"broker url {_safe(text)!r} has an invalid port (must be 1-65535)") from None
    if port is None:
        port = DEFAULT_PORTS[scheme]
    elif port == 0:
        raise InvalidUrl(f"broker url {_safe(text)!r} has an invalid port (must be 1-65535)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidUrl(f"broker url {_safe(text)!r} must not have a path, query or fragment")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and username is None:
        raise InvalidUrl(f"broker url {_safe(text)!r} has a password but no user name")
    return BrokerUrl(scheme=scheme, host=host, port=port, username=username, password=password)


def _safe(text: str) -> str:
    """``text`` with any password in its userinfo replaced by ``***`` (for error messages)."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return text
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hostport}{slash}{tail}"
