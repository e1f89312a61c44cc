"""The embedded broker: an amqtt broker on the gateway's event loop, its listeners, the ingest
hook, and what the gateway asks of it (who is connected, who listens, publish, disconnect)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from gateway.errors import AddressInUse, BrokerError
from gateway.source.access import INTERNAL_IDENTITY, Denials, topic_matches
from gateway.source.broker.access_broker import GatewayBroker, Routing
from gateway.source.broker.failures import AMQTT_ERRORS, address_in_use, quiet_amqtt_logs
from gateway.source.broker.guard import Guard
from gateway.source.broker.listeners import BrokerAddress, Listeners, ListenerTls
from gateway.source.broker.plugins import IngestHook, MessageCallback, PresenceCallback, plugin_config
from gateway.source.broker.shutdown import shut_down
from gateway.source.identity import Gatekeeper

log = logging.getLogger(__package__)  # the adapter logs under its package name


class EmbeddedBroker:
    """An amqtt broker on ``host:port`` (port 0 picks a free one) that hands accepted PUBLISHes to
    ``on_message``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        on_message: MessageCallback | None = None,
        on_presence: PresenceCallback | None = None,
        max_connections: int = -1,
        session_expiry_s: int | None = 3600,
        plain: bool = True,
        tls: ListenerTls | None = None,
        gate: Gatekeeper | None = None,
        denials: Denials | None = None,
        max_denied_publishes: int = 5,
    ) -> None:
        """Without ``gate`` every client is anonymous and may do anything (loopback use only).
        With it, every CONNECT is checked and each client is confined to its identity's topics.
        ``on_message(topic, payload)`` gets every accepted PUBLISH and ``on_presence()`` is called
        when a client connects or subscribes; both run on the loop and must never block."""
        self._listeners = Listeners(host, port, plain, tls, max_connections)
        self._tls = tls
        self._on_message = on_message
        self.on_presence = on_presence
        self._session_expiry_s = session_expiry_s
        self.denials = denials or Denials()
        self._guard = Guard(gate, self.denials, max_denied_publishes) if gate is not None else None
        self._broker: GatewayBroker | None = None
        self._hook: IngestHook | None = None
        self._hooked = False  # the hook passes messages on (from start() until stop() is done)
        self._deliver_errors = 0

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": self._listeners.config(),
            "plugins": plugin_config(self._presence, self._guard),
            "session_expiry_interval": self._session_expiry_s,
        }

    async def start(self) -> BrokerAddress:
        quiet_amqtt_logs()
        self._hooked = True
        try:
            broker = GatewayBroker(self._config(), guard=self._guard, tls=self._tls, deliver=self._deliver)
            hook = broker.plugins_manager.get_plugin("IngestHook")
            if not isinstance(hook, IngestHook):
                raise BrokerError("amqtt did not load the ingest hook plugin")
            await broker.start()
        except BrokerError:
            self._hooked = False
            raise
        except AMQTT_ERRORS as exc:
            self._hooked = False
            raise self._start_failed(exc) from exc
        self._broker, self._hook = broker, hook
        return self.address

    def _start_failed(self, exc: Exception) -> BrokerError | AddressInUse:
        bind = self._listeners.bind_text()
        if address_in_use(exc):
            return AddressInUse(f"the local broker cannot listen on {bind}: the address is already in use "
                                "(is another MQTT broker, e.g. the mosquitto service, running?)",
                                self._listeners.config_keys())
        return BrokerError(f"embedded broker failed to start on {bind}: {exc}")

    @property
    def listening(self) -> bool:
        """Between a successful start() and stop()."""
        return self._broker is not None

    @property
    def address(self) -> BrokerAddress:
        """The bound address of the first listener (plain, else TLS)."""
        return self._running().bound_address("default")

    @property
    def tls_address(self) -> BrokerAddress:
        """The bound address of the TLS listener."""
        if self._tls is None:
            raise BrokerError("the embedded broker has no TLS listener")
        return self._running().bound_address(self._listeners.name("tls"))

    def _running(self) -> GatewayBroker:
        if self._broker is None:
            raise BrokerError("embedded broker is not running")
        return self._broker

    @property
    def internal_credentials(self) -> tuple[str, str]:
        """Username and password of the gateway's own identity (may do anything; only this process
        knows the password)."""
        if self._guard is None:
            raise BrokerError("the embedded broker runs without authentication")
        return INTERNAL_IDENTITY, self._guard.gate.internal_password

    def disconnect(self, identities: Iterable[str] = (), serials: Iterable[str] = ()) -> int:
        """Close the connections of these identities, or that used these certificate serials."""
        if self._guard is None or self._broker is None:
            return 0
        sessions = [session for session, _handler in self._broker.session_handlers()]
        return self._guard.disconnect(sessions, identities, serials)

    def connected_clients(self) -> list[dict[str, str | None]]:
        """The clients connected now (the gateway's own identity left out): client id and, with
        authentication, the identity (device id) they logged in as; sorted by client id."""
        broker = self._broker
        if broker is None:
            return []
        out: list[dict[str, str | None]] = []
        for session, _handler in broker.session_handlers():
            if session.transitions.state != "connected":
                continue
            identity = self._guard.identity(session) if self._guard is not None else None
            if identity == INTERNAL_IDENTITY:
                continue
            out.append({"client_id": str(session.client_id), "identity": identity})
        return sorted(out, key=lambda c: c["client_id"] or "")

    @property
    def gate(self) -> Gatekeeper | None:
        return self._guard.gate if self._guard is not None else None

    @property
    def authenticated_connects(self) -> int:
        return self._guard.admitted if self._guard is not None else 0

    @property
    def routing(self) -> Routing:
        """How many messages went through amqtt's broadcast queue, skipped it (no subscriber) or
        were the gateway's own, delivered at once (a copy; zeros when not running)."""
        return dataclasses.replace(self._broker.routing) if self._broker is not None else Routing()

    @property
    def hook_errors(self) -> int:
        """Failures of the ingest and presence callbacks (each logged; the broker went on)."""
        return (self._hook.errors if self._hook else 0) + self._deliver_errors

    def _deliver(self, topic: str, payload: bytes) -> None:
        """Called by the broker for each accepted PUBLISH, inside the client's loop: that loop must
        go on whatever the consumer does, so a failure is counted and logged here."""
        if self._hooked and self._on_message is not None:
            try:
                self._on_message(topic, payload)
            except Exception:
                self._deliver_errors += 1
                log.exception("ingest callback failed (topic %r)", topic[:120])

    def _presence(self) -> None:
        if self._hooked and self.on_presence is not None:
            self.on_presence()

    def has_subscriber(self, topic: str, literal_level: int | None = None) -> bool:
        """True when a connected client has a subscription matching ``topic``: a message published
        there now reaches someone. (amqtt keeps disconnected persistent sessions' subscriptions.)
        With ``literal_level`` only filters that name that level of ``topic`` literally count (the
        device id level of a command topic: ``devices/d1/commands/+`` is d1 itself listening,
        ``devices/#`` or ``devices/+/commands/+`` is someone else)."""
        broker = self._broker
        if broker is None:
            return False
        for topic_filter, subscribers in broker.subscriptions.items():
            if topic_matches(topic_filter, topic, literal_level) and any(
                    session.transitions.state == "connected" for session, _qos in subscribers):
                return True
        return False

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish from inside the broker (no client connection needed)."""
        broker = self._running()
        try:
            await broker.internal_message_broadcast(topic, payload, qos)
        except AMQTT_ERRORS as exc:
            raise BrokerError(f"embedded broker: cannot publish to {topic[:120]!r}: {exc}") from exc

    async def stop(self) -> None:
        """Shut down without losing a message a device was told was received (see
        :mod:`gateway.source.broker.shutdown`)."""
        broker, self._broker = self._broker, None
        if broker is None:
            return
        try:
            await shut_down(broker, self._on_message, self._guard)
        finally:
            self._hooked = False

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
