"""Who is connecting: turn a CONNECT (client id, username, password, verified client certificate,
will) into one identity, or a refusal with a named reason. Free of amqtt.

Modes (``local_broker.auth.mode``):

- ``password``: the username is the device id, checked against the password file.
- ``certificate``: the identity is the verified client certificate's CN (or its only SAN DNS name);
  a username, if given, must equal it; revoked serials are refused.
- ``either``: a certificate when one is presented, else a password (a password sent along with a
  certificate must be right too).
- ``both``: a certificate and a password, for the same identity.

The gateway's internal identity (:data:`gateway.source.access.INTERNAL_IDENTITY`) authenticates with a
random secret made at start and known only to this process. Whatever the mode, the client id must
fit ``auth.client_id`` for the identity, and a will message must be one the identity could publish
(never retained).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from bridge.protocol.topics import valid_id
from gateway.source.access import (
    ACL_WILL,
    AUTH_FAILED,
    CERT_REQUIRED,
    CERT_REVOKED,
    CLIENT_ID_MISMATCH,
    IDENTITY_MISMATCH,
    INTERNAL_IDENTITY,
    NO_CREDENTIALS,
    RETAIN_DENIED,
    AclPolicy,
    client_id_allowed,
)
from gateway.source.passwords import PasswordVerifier

Refusal = Literal["bad_credentials", "not_authorized", "identifier_rejected"]


@dataclass(frozen=True)
class PeerCert:
    """The parts of a verified client certificate the gateway uses."""

    common_name: str | None
    dns_names: tuple[str, ...]
    serial: str  # upper-case hex, no leading zeros

    @classmethod
    def from_ssl(cls, info: dict[str, Any]) -> PeerCert:
        """From :meth:`ssl.SSLSocket.getpeercert` (the verified, parsed form)."""
        cn = None
        for rdn in info.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    cn = str(value)
        dns = tuple(str(v) for k, v in info.get("subjectAltName", ()) if k == "DNS")
        return cls(cn, dns, normalise_serial(str(info.get("serialNumber", ""))))

    @property
    def identity(self) -> str | None:
        if self.common_name:
            return self.common_name
        return self.dns_names[0] if len(self.dns_names) == 1 else None


def normalise_serial(serial: str) -> str:
    return serial.strip().upper().lstrip("0") or "0"


@dataclass(frozen=True)
class ConnectRequest:
    client_id: str
    username: str | None
    password: str | None
    cert: PeerCert | None
    will_topic: str | None = None
    will_retain: bool = False


@dataclass(frozen=True)
class Verdict:
    identity: str | None
    reason: str | None = None
    detail: str = ""
    refusal: Refusal = "not_authorized"
    serial: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def _refuse(reason: str, detail: str, refusal: Refusal, who: str | None = None) -> Verdict:
    return Verdict(who, reason, detail, refusal)


class Gatekeeper:
    def __init__(self, mode: str, policy: AclPolicy, passwords: PasswordVerifier,
                 client_id_pattern: str = "{device_id}", revoked: Iterable[str] = ()) -> None:
        self.mode = mode
        self.policy = policy
        self.passwords = passwords
        self.client_id_pattern = client_id_pattern
        self.revoked: frozenset[str] = frozenset(normalise_serial(s) for s in revoked)
        self.internal_password = secrets.token_urlsafe(24)

    async def admit(self, req: ConnectRequest) -> Verdict:
        verdict = await self._authenticate(req)
        if not verdict.ok or verdict.identity is None:
            return verdict
        who = verdict.identity
        if not client_id_allowed(self.client_id_pattern, who, req.client_id):
            return _refuse(CLIENT_ID_MISMATCH, f"client id {req.client_id[:80]!r} does not fit "
                           f"{self.client_id_pattern!r}", "identifier_rejected", who)
        if req.will_topic is not None:
            if req.will_retain:
                return _refuse(RETAIN_DENIED, "a device may not leave a retained will", "not_authorized", who)
            if not self.policy.grants(who).may_publish(req.will_topic):
                return _refuse(ACL_WILL, f"will topic {req.will_topic[:120]!r} is not its own", "not_authorized", who)
        return verdict

    async def _authenticate(self, req: ConnectRequest) -> Verdict:
        if req.username == INTERNAL_IDENTITY:
            if req.password is not None and hmac.compare_digest(req.password.encode(),
                                                                self.internal_password.encode()):
                return Verdict(INTERNAL_IDENTITY)
            return _refuse(AUTH_FAILED, "wrong secret for the gateway's internal identity", "bad_credentials")
        cert_who = None
        if req.cert is not None and self.mode in ("certificate", "either", "both"):
            cert_who = req.cert.identity
            if cert_who is None or not valid_id(cert_who):
                return _refuse(AUTH_FAILED, "the certificate names no valid device id (CN or one SAN DNS name)",
                               "bad_credentials")
            if req.cert.serial in self.revoked:
                return _refuse(CERT_REVOKED, f"certificate serial {req.cert.serial} is revoked", "not_authorized",
                               cert_who)
            if req.username is not None and req.username != cert_who:
                return _refuse(IDENTITY_MISMATCH, f"username {req.username[:80]!r} is not the certificate's "
                               f"{cert_who!r}", "bad_credentials", cert_who)
        if self.mode in ("certificate", "both") and cert_who is None:
            return _refuse(CERT_REQUIRED, "no verified client certificate", "not_authorized", req.username)
        if cert_who is not None and (self.mode == "certificate" or (self.mode == "either" and req.password is None)):
            return Verdict(cert_who, serial=req.cert.serial if req.cert else None)
        return await self._password(req, cert_who)

    async def _password(self, req: ConnectRequest, cert_who: str | None) -> Verdict:
        if req.username is None or req.password is None:
            return _refuse(NO_CREDENTIALS, "no username and password", "bad_credentials", cert_who)
        who = req.username
        if not await self.passwords.verify(who, req.password):
            return _refuse(AUTH_FAILED, "unknown device or wrong password", "bad_credentials",
                           who if valid_id(who) else repr(who[:40]))
        return Verdict(who, serial=req.cert.serial if req.cert else None)
