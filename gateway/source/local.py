"""The local broker side, built from the config: the embedded broker (with its TLS listener,
credentials and ACL) or an external broker, and what the rest of the gateway asks of either.

:func:`build_local` loads the credentials (a bad file raises ``CredentialsError``: the gateway does
not start). :class:`LocalSide` runs the one that is configured, delivers commands to devices through
it, and applies reloaded credentials to the connected clients.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from bridge.mqtt.types import ClientSettings
from gateway.config import GatewayConfig, Secrets, split_host_port
from gateway.source.access import AclPolicy, Denials, pattern_as_filter
from gateway.source.broker import EmbeddedBroker, ListenerTls
from gateway.source.credentials import Changes, CredentialStore
from gateway.source.external import ExternalSource
from gateway.source.identity import Gatekeeper
from gateway.source.pki import Pki

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup
else:  # pragma: no cover
    from taskgroup import TaskGroup

log = logging.getLogger(__name__)


def acl_policy(cfg: GatewayConfig) -> AclPolicy:
    """``[local_broker.auth.acl]``, or by default each device's own topics of ``[topics]``: publish
    telemetry, per-metric telemetry, events and responses (and, with device uploads on, file
    manifests and chunks); subscribe to its commands (and its file status topics)."""
    acl, t = cfg.local_broker.auth.acl, cfg.topics
    files = cfg.files.enabled and cfg.files.device_uploads
    publish = acl.publish if acl.publish is not None else [
        pattern_as_filter(p) for p in (t.telemetry, t.telemetry_metric, t.events, t.responses,
                                       *((t.file_manifest, t.file_chunk) if files else ()))]
    subscribe = acl.subscribe if acl.subscribe is not None else [
        pattern_as_filter(t.commands, open_end=True), *([pattern_as_filter(t.file_status)] if files else [])]
    return AclPolicy(tuple(publish), tuple(subscribe))


def credential_store(cfg: GatewayConfig) -> CredentialStore | None:
    """The loaded password file and revoked list, None without device authentication."""
    auth = cfg.local_broker.auth
    if auth.mode == "none":
        return None  # loopback only, or allow_anonymous_lan (warned about by check and run)
    store = CredentialStore(cfg.password_file if auth.passwords else None,
                            Pki(cfg.pki_dir).revoked_file if auth.certificates else None)
    store.load()
    return store


def listener_tls(cfg: GatewayConfig) -> ListenerTls | None:
    tls = cfg.local_broker.tls
    if tls is None:
        return None
    pki = Pki(cfg.pki_dir)
    host, port = split_host_port(tls.listen)
    ca = tls.ca_file or (pki.ca_file if cfg.local_broker.auth.certificates else None)
    return ListenerTls(host, port, tls.cert_file or pki.server_cert, tls.key_file or pki.server_key, ca,
                       tls.require_client_cert, tls.min_version)


@dataclass(frozen=True)
class LocalSide:
    """The local broker: ``embedded`` (with its ``credentials``, if any) or ``external``; one is set."""

    embedded: EmbeddedBroker | None
    external: ExternalSource | None
    credentials: CredentialStore | None
    denials: Denials

    async def deliver(self, topic: str, payload: bytes) -> None:
        """Publish a command to a local device (QoS 1)."""
        if self.embedded is not None:
            await self.embedded.publish(topic, payload, qos=1)
        else:
            assert self.external is not None
            await self.external.publish(topic, payload, qos=1)

    def has_subscriber(self, topic: str, device_level: int | None) -> bool:
        return self.embedded is not None and self.embedded.has_subscriber(topic, device_level)

    @property
    def ready(self) -> bool:
        """Listening (embedded) or connected (external)."""
        if self.embedded is not None:
            return self.embedded.listening
        return self.external is not None and self.external.connection is not None

    def credentials_changed(self, changes: Changes) -> None:
        """Reloaded credentials: the new revoked list applies, and removed or revoked clients go."""
        if self.embedded is None or self.credentials is None:
            return
        gate = self.embedded.gate
        if gate is not None:
            gate.revoked = self.credentials.revoked
        kicked = self.embedded.disconnect(changes.removed, changes.revoked)
        if kicked:
            log.warning("disconnected %d client(s) whose password was removed or certificate revoked", kicked)

    async def start(self, tg: TaskGroup, stop: asyncio.Event, cfg: GatewayConfig,
                    reload: asyncio.Event) -> asyncio.Task[None] | None:
        """Start the embedded broker (and the credential watch), or the external source's task
        (returned: it ends after ``stop``)."""
        if self.embedded is not None:
            await self.embedded.start()
            if self.credentials is not None:
                tg.create_task(self.credentials.watch(stop, cfg.local_broker.auth.reload_interval_s, reload,
                                                      self.credentials_changed), name="credentials")
            return None
        assert self.external is not None
        return tg.create_task(self.external.run(stop), name="local-source")


def build_local(cfg: GatewayConfig, secrets: Secrets, *, on_message: Callable[[str, bytes], None],
                on_presence: Callable[[], None], subscriptions: list[str]) -> LocalSide:
    """The configured local side; ``on_message`` takes every device message, ``on_presence`` is
    told when a client subscribes or leaves (embedded only); an external broker is subscribed to
    ``subscriptions``."""
    lb, denials = cfg.local_broker, Denials()
    if lb.mode != "embedded":
        local_pw = secrets.local_password.get_secret_value() if secrets.local_password else None
        external = ExternalSource(
            lb.url,
            ClientSettings(client_id=lb.client_id or f"edge-{cfg.gateway.id}-ingest", protocol="3.1.1",
                           username=lb.username, password=local_pw, clean_start=False),
            subscriptions, on_message,
        )
        return LocalSide(None, external, None, denials)
    store = credential_store(cfg)
    gate = None if store is None else Gatekeeper(lb.auth.mode, acl_policy(cfg), store.verifier,
                                                 lb.auth.client_id, store.revoked)
    host, port = split_host_port(lb.listen)
    embedded = EmbeddedBroker(host, port, on_message=on_message, max_connections=lb.max_connections,
                              plain=lb.plain, tls=listener_tls(cfg), gate=gate, denials=denials,
                              max_denied_publishes=lb.auth.max_denied_publishes, on_presence=on_presence)
    return LocalSide(embedded, None, store, denials)
