"""amqtt adapter: the embedded local broker and its in-process ingest hook.

This is the only module that imports amqtt. The broker runs on the gateway's event loop with an
explicit plugin set (anonymous auth and our ingest hook: no default loggers, no $SYS). Messages
reach the gateway through amqtt's ``on_broker_message_broadcast`` hook, which fires after the
broker accepted the PUBLISH. amqtt runs hooks as fire-and-forget tasks, so the callback given to
:class:`EmbeddedBroker` must never block: the ingest stage puts into a bounded queue and counts
overflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqtt.broker import Broker
from amqtt.plugins.base import BasePlugin

from gateway.errors import BrokerError

log = logging.getLogger(__name__)

MessageCallback = Callable[[str, bytes], None]
PresenceCallback = Callable[[], None]

_HOOK_PATH = "gateway.broker.IngestHook"
_HANDLER_STOP_S = 1.0
_DRAIN_S = 1.0
_AUTH_PATH = "amqtt.plugins.authentication.AnonymousAuthPlugin"


class IngestHook(BasePlugin[Any]):  # type: ignore[misc]  # amqtt ships no type hints
    """amqtt plugin that hands every accepted PUBLISH to a callback, and tells ``presence`` when a
    client connects or subscribes (so held commands can be delivered at once)."""

    deliver: MessageCallback | None = None
    presence: PresenceCallback | None = None
    errors: int = 0

    def _guarded(self, what: str, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except Exception:  # hooks run as unobserved tasks: log and count, never lose silently
            self.errors += 1
            log.exception("%s failed (topic %r)", what, getattr(args[-1], "topic", None) if args else None)

    def _presence_changed(self) -> None:
        presence = self.presence
        if presence is not None:
            self._guarded("presence callback", presence)

    async def on_broker_client_connected(self, *, client_id: str, **_: Any) -> None:
        self._presence_changed()

    async def on_broker_client_subscribed(self, *, client_id: str, topic: str, **_: Any) -> None:
        self._presence_changed()

    async def on_broker_message_broadcast(self, *, client_id: str, message: Any) -> None:
        deliver = self.deliver
        if deliver is not None:
            self._guarded("ingest callback", _hand_over, deliver, message)


def _hand_over(deliver: MessageCallback, message: Any) -> None:
    deliver(str(message.topic), bytes(message.data or b""))


def topic_matches(topic_filter: str, topic: str, literal_level: int | None = None) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest); ``$`` topics never match a wildcard
    in the first level. With ``literal_level`` (0-based) the filter must also spell that level
    out, not cover it with ``+`` or ``#``."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    want, got = topic_filter.split("/"), topic.split("/")
    if literal_level is not None and (literal_level >= len(want) or want[literal_level] in ("+", "#")
                                      or (literal_level > 0 and "#" in want[:literal_level])):
        return False
    for i, level in enumerate(want):
        if level == "#":
            return i == len(want) - 1
        if i >= len(got) or level not in ("+", got[i]):
            return False
    return len(want) == len(got)


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int


class EmbeddedBroker:
    """An amqtt broker on ``host:port`` (port 0 picks a free one) with the ingest hook installed."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        on_message: MessageCallback | None = None,
        max_connections: int = -1,
        session_expiry_s: int | None = 3600,
    ) -> None:
        self._host = host
        self._port = port
        self._on_message = on_message
        self._max_connections = max_connections
        self._session_expiry_s = session_expiry_s
        self._broker: Broker | None = None
        self._hook: IngestHook | None = None
        self.on_presence: PresenceCallback | None = None

    def _config(self) -> dict[str, Any]:
        listener: dict[str, Any] = {
            "type": "tcp",
            "bind": f"{self._host}:{self._port}",
            "max_connections": self._max_connections,
        }
        return {
            "listeners": {"default": listener},
            "plugins": {_AUTH_PATH: {"allow_anonymous": True}, _HOOK_PATH: {}},
            "session_expiry_interval": self._session_expiry_s,
        }

    async def start(self) -> BrokerAddress:
        try:
            broker = Broker(self._config())
            hook = broker.plugins_manager.get_plugin("IngestHook")
            if not isinstance(hook, IngestHook):
                raise BrokerError("amqtt did not load the ingest hook plugin")
            hook.deliver = self._on_message
            hook.presence = self._presence
            await broker.start()
        except BrokerError:
            raise
        except Exception as exc:
            raise BrokerError(f"embedded broker failed to start on {self._host}:{self._port}: {exc}") from exc
        self._broker, self._hook = broker, hook
        return self.address

    @property
    def address(self) -> BrokerAddress:
        """The bound address. amqtt keeps the real port in a private attribute: read it only here."""
        if self._broker is None:
            raise BrokerError("embedded broker is not running")
        server = self._broker._servers["default"].instance
        sockname = server.sockets[0].getsockname()
        return BrokerAddress(str(sockname[0]), int(sockname[1]))

    @property
    def hook_errors(self) -> int:
        return self._hook.errors if self._hook else 0

    def _presence(self) -> None:
        if self.on_presence is not None:
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
        if self._broker is None:
            raise BrokerError("embedded broker is not running")
        await self._broker.internal_message_broadcast(topic, payload, qos)

    async def stop(self) -> None:
        """Shut down without losing a message a device was told was received.

        amqtt acknowledges an incoming QoS 1 PUBLISH when it queues it, before our hook sees it,
        and its shutdown clears those queues and closes its listeners last. So: stop accepting
        connections, stop each client's reader (no more acknowledgements), hand what amqtt already
        acknowledged to the callback, and only then let amqtt shut down.
        """
        broker, self._broker = self._broker, None
        if broker is None:
            return
        for server in broker._servers.values():
            instance = getattr(server, "instance", None)
            if instance is not None:
                instance.close()
        await self._drain_sessions(broker)
        for session, handler in list(broker._sessions.values()):
            try:
                # the reader is cancelled at once; amqtt may then wait forever for it to report back
                await asyncio.wait_for(handler.stop(), _HANDLER_STOP_S)
            except Exception as exc:  # noqa: BLE001 - amqtt internals; the shutdown below still runs
                log.debug("stopping client handler: %r", exc)
            self._hand_over_queued(session)
        try:
            await asyncio.wait_for(broker.shutdown(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - amqtt may raise anything on shutdown; never mask the caller's
            log.warning("embedded broker shutdown: %s", exc)
        finally:
            if self._hook is not None:
                self._hook.deliver = None
                self._hook.presence = None

    async def _drain_sessions(self, broker: Broker) -> None:
        """Stop reading from every client socket (no new PUBLISH, so no new acknowledgement) and
        let amqtt's own client loops pass what is already queued to the hook, the normal way.
        Whatever is still queued after ``_DRAIN_S`` is handed over by :meth:`_hand_over_queued`."""
        sessions = list(broker._sessions.values())
        for _session, handler in sessions:
            stream = getattr(getattr(handler, "reader", None), "_reader", None)
            transport = getattr(stream, "_transport", None)
            if transport is not None:
                with contextlib.suppress(OSError, RuntimeError):  # the socket may already be gone
                    transport.pause_reading()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _DRAIN_S
        quiet = 0
        while quiet < 3 and loop.time() < deadline:  # empty three polls in a row: the loops caught up
            busy = any(getattr(s, "delivered_message_queue", None) is not None and not s.delivered_message_queue.empty()
                       for s, _ in sessions)
            quiet = 0 if busy else quiet + 1
            await asyncio.sleep(0.005)

    def _hand_over_queued(self, session: Any) -> None:
        queue = getattr(session, "delivered_message_queue", None)
        deliver = self._on_message
        while queue is not None and not queue.empty():
            message = queue.get_nowait()
            if deliver is not None and message is not None and message.topic:
                deliver(str(message.topic), bytes(message.data or b""))

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
