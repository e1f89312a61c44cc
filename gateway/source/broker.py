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
import errno
import logging
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import BAD_USERNAME_PASSWORD, IDENTIFIER_REJECTED, NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BasePlugin, BaseTopicPlugin
from amqtt.utils import gen_client_id

from gateway.errors import AddressInUse, BrokerError
from gateway.source.access import (
    ACL_PUBLISH,
    ACL_RECEIVE,
    ACL_SUBSCRIBE,
    INTERNAL_IDENTITY,
    RETAIN_DENIED,
    REVOKED,
    TOO_MANY_DENIALS,
    Denials,
    topic_matches,
)
from gateway.source.identity import ConnectRequest, Gatekeeper, PeerCert

log = logging.getLogger(__name__)

MessageCallback = Callable[[str, bytes], None]
PresenceCallback = Callable[[], None]

_HOOK_PATH = "gateway.source.broker.IngestHook"
_HANDLER_STOP_S = 1.0
_DRAIN_S = 1.0
_AUTH_PATH = "amqtt.plugins.authentication.AnonymousAuthPlugin"
_ACCESS_PATH = "gateway.source.broker.AccessPlugin"
_CLIENT_ATTR = "_edge_gateway_client"
_LOCK_ATTR = "_edge_gateway_connect_lock"
_REFUSALS = {"bad_credentials": BAD_USERNAME_PASSWORD, "not_authorized": NOT_AUTHORIZED,
             "identifier_rejected": IDENTIFIER_REJECTED}


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


@dataclass
class _Client:
    identity: str
    serial: str | None
    handler: Any
    denied: int = 0


class _Guard:
    """Per-connection identities and the ACL checks, on top of a :class:`Gatekeeper`."""

    def __init__(self, gate: Gatekeeper, denials: Denials, max_denied_publishes: int) -> None:
        self.gate = gate
        self.denials = denials
        self.max_denied = max_denied_publishes
        self.admitted = 0
        self._kicks: set[asyncio.Future[Any]] = set()

    @staticmethod
    def client(session: Any) -> _Client | None:
        """The identity admitted for a session (amqtt's Session is unhashable: kept on it)."""
        return getattr(session, _CLIENT_ATTR, None)

    def identity(self, session: Any) -> str | None:
        client = self.client(session)
        return client.identity if client else None

    def may_publish(self, session: Any, topic: str, retain: bool) -> bool:
        client = self.client(session)
        if client is None:
            return False
        if retain and client.identity != INTERNAL_IDENTITY:
            self._denied_publish(session, client, RETAIN_DENIED, f"retained publish to {topic[:120]!r}")
            return False
        if self.gate.policy.grants(client.identity).may_publish(topic):
            return True
        self._denied_publish(session, client, ACL_PUBLISH, f"publish to {topic[:120]!r}")
        return False

    def _denied_publish(self, session: Any, client: _Client, reason: str, detail: str) -> None:
        self.denials.deny(reason, client.identity, detail)
        client.denied += 1
        if self.max_denied and client.denied == self.max_denied:
            self.denials.deny(TOO_MANY_DENIALS, client.identity,
                              f"disconnected after {client.denied} denied publishes")
            self.kick(session, client)

    def may_subscribe(self, session: Any, topic_filter: str) -> bool:
        who = self.identity(session)
        if who is not None and self.gate.policy.grants(who).may_subscribe(topic_filter):
            return True
        self.denials.deny(ACL_SUBSCRIBE, who, f"subscribe to {topic_filter[:120]!r}")
        return False

    def may_receive(self, session: Any, topic: str) -> bool:
        who = self.identity(session)
        if who is not None and self.gate.policy.grants(who).may_receive(topic):
            return True
        self.denials.deny(ACL_RECEIVE, who, f"delivery of {topic[:120]!r}")
        return False

    def kick(self, session: Any, client: _Client) -> None:
        """Close a connection now (no will message: the device is being thrown out)."""
        session.will_flag = False
        task = asyncio.ensure_future(client.handler.handle_connection_closed())
        self._kicks.add(task)
        task.add_done_callback(self._kicks.discard)

    def disconnect(self, sessions: Iterable[Any], identities: Iterable[str] = (),
                   serials: Iterable[str] = ()) -> int:
        who, revoked = set(identities), set(serials)
        kicked = 0
        for session in sessions:
            client = self.client(session)
            if client is not None and session.transitions.state == "connected" and (
                    client.identity in who or (client.serial is not None and client.serial in revoked)):
                self.denials.deny(REVOKED, client.identity, "credentials removed or certificate revoked")
                self.kick(session, client)
                kicked += 1
        return kicked


class AccessPlugin(BaseAuthPlugin, BaseTopicPlugin):  # type: ignore[misc]  # amqtt ships no type hints
    """amqtt's ``authenticate`` and ``topic_filtering`` hooks, answered by the :class:`_Guard`.
    The CONNECT itself was already checked before amqtt touched any existing session
    (:meth:`_GatewayBroker._initialize_client_session`)."""

    guard: _Guard | None = None

    async def authenticate(self, *, session: Any) -> bool:
        return self.guard is not None and self.guard.identity(session) is not None

    async def topic_filtering(self, *, session: Any = None, topic: str | None = None,
                              action: Any = None) -> bool:
        guard = self.guard
        if guard is None or session is None or topic is None:
            return False
        if action == Action.PUBLISH:
            return True  # checked with the retain flag in _GatewayBroker._handle_message_delivery
        if action == Action.SUBSCRIBE:
            return guard.may_subscribe(session, topic)
        return guard.may_receive(session, topic)


@dataclass
class _ConnectLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # connections holding or waiting for it


class _GatewayBroker(Broker):  # type: ignore[misc]  # amqtt ships no type hints
    """amqtt's broker with the gateway's access control where amqtt has no hook for it.

    - A CONNECT is checked (credentials, certificate, client id, will) *before* amqtt deletes or
      resumes the session of that client id, so a refused client cannot wipe another's session.
    - A second connection of the same identity and client id closes the first one.
    - A PUBLISH is checked with its retain flag (a plugin sees only the topic).
    - Retained messages go only to sessions allowed to receive them, on their own subscriptions
      (amqtt otherwise sends a connecting client retained messages for *every* subscription).
    """

    guard: _Guard | None = None
    listener_tls: dict[str, ListenerTls] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connect_locks: dict[str, _ConnectLock] = {}

    def _create_ssl_context(self, listener: Any) -> ssl.SSLContext:
        for tls in self.listener_tls.values():
            if listener.get("certfile") is not None and Path(listener["certfile"]) == tls.cert_file:
                return tls.context()
        return super()._create_ssl_context(listener)  # type: ignore[no-any-return]

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str,
                                         remote_port: int) -> tuple[Any, Any]:
        guard = self.guard
        if guard is None:
            return await super()._initialize_client_session(reader, writer, remote_address, remote_port)  # type: ignore[no-any-return]
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except MQTTError as exc:
            await writer.close()
            raise MQTTError(exc) from exc
        except (AMQTTError, NoDataError) as exc:
            raise AMQTTError(exc) from exc
        verdict = await guard.gate.admit(_connect_request(session))
        if not verdict.ok or verdict.identity is None:
            guard.denials.deny(verdict.reason or "auth_failed", verdict.identity,
                               f"connect from {remote_address} as client id {session.client_id[:80]!r}: "
                               f"{verdict.detail}")
            await ConnackPacket.build(0, _REFUSALS[verdict.refusal]).to_stream(writer)
            await writer.close()
            raise AMQTTError(f"connection refused: {verdict.reason}")
        guard.admitted += 1
        client_id = session.client_id or ""
        # One connect per client id at a time, from here until amqtt has started the connection's
        # handler: a connection never replaces one that is still being set up (whose disconnect
        # could not be signalled yet), so exactly one of several simultaneous connections remains.
        entry = self._connect_locks.setdefault(client_id, _ConnectLock())
        entry.users += 1
        try:
            await entry.lock.acquire()
        except BaseException:
            entry.users -= 1
            raise
        setattr(handler, _LOCK_ATTR, client_id)
        try:
            return await self._resume_or_replace(handler, session, verdict)
        except BaseException:
            self._release_connect_lock(handler)
            raise

    async def _resume_or_replace(self, handler: Any, session: Any, verdict: Any) -> tuple[Any, Any]:
        client_id = session.client_id
        existing = self._sessions.get(client_id) if client_id else None
        if existing is not None and existing[0].transitions.state == "connected":
            await existing[1].handle_connection_closed()  # MQTT-3.1.4-2: the new connection replaces the old
            with contextlib.suppress(asyncio.TimeoutError):  # amqtt may wait forever for the old reader
                await asyncio.wait_for(existing[1].stop(), _HANDLER_STOP_S)
        if session.clean_session:
            if client_id:
                await self._delete_session(client_id)
            else:
                session.client_id = gen_client_id()
            session.parent = 0
        elif existing is not None:
            old = existing[0]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive",
                         "username", "password", "ssl_object"):
                setattr(old, name, getattr(session, name))
            session = old
            session.parent = 1
        else:
            session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        setattr(session, _CLIENT_ATTR, _Client(verdict.identity, verdict.serial, handler))
        return handler, session

    def _release_connect_lock(self, handler: Any) -> None:
        client_id = getattr(handler, _LOCK_ATTR, None)
        if client_id is None:
            return
        setattr(handler, _LOCK_ATTR, None)
        entry = self._connect_locks[client_id]
        entry.lock.release()
        entry.users -= 1
        if entry.users == 0:
            del self._connect_locks[client_id]

    async def _handle_client_session(self, reader: Any, writer: Any, client_session: Any, handler: Any,
                                     server: Any, listener_name: str) -> None:
        try:
            await super()._handle_client_session(reader, writer, client_session, handler, server, listener_name)
        finally:
            self._release_connect_lock(handler)  # if the connection ended before it started

    async def _publish_session_retained_messages(self, session: Any) -> None:
        handler = self._get_handler(session)
        if handler is not None:  # amqtt calls this right after starting the handler
            self._release_connect_lock(handler)
        await super()._publish_session_retained_messages(session)

    async def _topic_filtering(self, session: Any, topic: str, action: Any) -> bool:
        if self.guard is not None and action == Action.PUBLISH:
            return True  # already checked, with the retain flag, in _handle_message_delivery
        return await super()._topic_filtering(session, topic, action)  # type: ignore[no-any-return]

    async def _handle_disconnect(self, client_session: Any, handler: Any, disconnect_waiter: Any) -> None:
        """amqtt acknowledged each queued QoS 1 PUBLISH when it queued it, but its client loop ends at
        the DISCONNECT and the session's queue is then cleared: a device that publishes a burst and
        disconnects would lose the tail. Process what is queued first, the normal way."""
        queue = getattr(client_session, "delivered_message_queue", None)
        loop = asyncio.get_running_loop()
        while queue is not None and not queue.empty():
            done = loop.create_future()
            done.set_result(queue.get_nowait())
            await self._handle_message_delivery(client_session, handler, done)
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)

    async def _handle_message_delivery(self, client_session: Any, handler: Any, wait_deliver: Any) -> bool:
        guard = self.guard
        if guard is not None and not wait_deliver.cancelled() and wait_deliver.exception() is None:
            message = wait_deliver.result()
            if message is not None and message.topic and not guard.may_publish(
                    client_session, str(message.topic), _retained(message)):
                return True  # MQTT 3.1.1 cannot refuse a PUBLISH: drop it (counted) and keep reading
        return await super()._handle_message_delivery(client_session, handler, wait_deliver)  # type: ignore[no-any-return]

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Any) -> None:
        guard = self.guard
        if guard is None:
            await super()._publish_retained_messages_for_subscription(subscription, session)
            return
        topic_filter, qos = subscription
        own = any(s is session for s, _ in self._subscriptions.get(topic_filter, ()))
        handler = self._get_handler(session)
        if not own or handler is None:
            return
        tasks = [asyncio.ensure_future(handler.mqtt_publish(r.topic, r.data, min(qos, r.qos or qos), retain=True))
                 for topic, r in list(self._retained_messages.items())
                 if topic_matches(topic_filter, topic) and guard.may_receive(session, topic)]
        if tasks:
            await asyncio.wait(tasks)


def _retained(message: Any) -> bool:
    packet = getattr(message, "publish_packet", None)
    return bool(packet is not None and packet.retain_flag)


def _connect_request(session: Any) -> ConnectRequest:
    cert = None
    ssl_object = session.ssl_object
    if ssl_object is not None:
        info = ssl_object.getpeercert()
        if info:
            cert = PeerCert.from_ssl(info)
    password = session.password
    return ConnectRequest(
        client_id=session.client_id or "", username=session.username,
        password=password.decode("utf-8", "replace") if isinstance(password, bytes) else password, cert=cert,
        will_topic=session.will_topic if session.will_flag else None,
        will_retain=bool(session.will_flag and session.will_retain))


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError among ``exc`` and its causes (amqtt wraps the one a listener raised), if any."""
    while exc is not None:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _address_in_use(exc: BaseException | None) -> bool:
    err = _os_error(exc)
    return err is not None and err.errno == errno.EADDRINUSE


class _QuietFilter(logging.Filter):
    """Drops amqtt records that are not errors of the gateway, from places amqtt offers no hook for:

    - the ERROR and WARNING for a connection closed before it sent anything (a TCP health probe, a
      port scan); the gateway logs those at DEBUG instead;
    - the traceback of a listener that could not be opened (port taken, address not on this host):
      :meth:`EmbeddedBroker.start` raises it as one :class:`BrokerError` the CLI prints in one line.
    """

    _NO_DATA = "No data to decode MQTT packet fixed header"

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self._NO_DATA in message:
            if message.startswith("No data from"):
                log.debug("connection closed before CONNECT: %s", message)
            return False
        return not (message == "Broker startup failed" and record.exc_info is not None
                    and _os_error(record.exc_info[1]) is not None)


_QUIET_FILTER = _QuietFilter()


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
        plain: bool = True,
        tls: ListenerTls | None = None,
        gate: Gatekeeper | None = None,
        denials: Denials | None = None,
        max_denied_publishes: int = 5,
        on_presence: PresenceCallback | None = None,
    ) -> None:
        """Without ``gate`` every client is anonymous and may do anything (loopback use only).
        With it, every CONNECT is checked and each client is confined to its identity's topics.
        ``on_presence`` is called when a client subscribes or goes away."""
        self._host = host
        self._port = port
        self._on_message = on_message
        self._max_connections = max_connections
        self._session_expiry_s = session_expiry_s
        self._plain = plain
        self._tls = tls
        self.denials = denials or Denials()
        self._guard = _Guard(gate, self.denials, max_denied_publishes) if gate is not None else None
        self._broker: Broker | None = None
        self._hook: IngestHook | None = None
        self._on_presence = on_presence

    def _listeners(self) -> dict[str, dict[str, Any]]:
        plain: dict[str, Any] = {"type": "tcp", "bind": f"{self._host}:{self._port}",
                                 "max_connections": self._max_connections}
        out = {"plain": plain} if self._plain else {}
        tls = self._tls
        if tls is not None:
            out["tls"] = {"type": "tcp", "bind": f"{tls.host}:{tls.port}", "max_connections": self._max_connections,
                          "ssl": True, "certfile": str(tls.cert_file), "keyfile": str(tls.key_file)}
        if not out:
            raise BrokerError("the embedded broker needs a plain or a TLS listener")
        return out

    def _config(self) -> dict[str, Any]:
        listeners = self._listeners()
        names = list(listeners)  # amqtt requires a listener named "default"; the first one is
        auth = {_ACCESS_PATH: {}} if self._guard is not None else {_AUTH_PATH: {"allow_anonymous": True}}
        return {
            "listeners": {("default" if i == 0 else name): cfg for i, (name, cfg) in
                          enumerate(zip(names, listeners.values(), strict=True))},
            "plugins": {**auth, _HOOK_PATH: {}},
            "session_expiry_interval": self._session_expiry_s,
        }

    def _bind_text(self) -> str:
        binds = ([f"{self._host}:{self._port}"] if self._plain else []) + (
            [f"{self._tls.host}:{self._tls.port}"] if self._tls is not None else [])
        return " and ".join(binds)

    def _listener_name(self, kind: str) -> str:
        return "default" if next(iter(self._listeners())) == kind else kind

    async def start(self) -> BrokerAddress:
        amqtt_log = logging.getLogger("amqtt.broker")
        if _QUIET_FILTER not in amqtt_log.filters:
            amqtt_log.addFilter(_QUIET_FILTER)
        try:
            broker = _GatewayBroker(self._config())
            broker.listener_tls = {"tls": self._tls} if self._tls is not None else {}
            hook = broker.plugins_manager.get_plugin("IngestHook")
            if not isinstance(hook, IngestHook):
                raise BrokerError("amqtt did not load the ingest hook plugin")
            hook.deliver = self._on_message
            hook.presence = self._presence
            if self._guard is not None:
                access = broker.plugins_manager.get_plugin("AccessPlugin")
                if not isinstance(access, AccessPlugin):
                    raise BrokerError("amqtt did not load the access plugin")
                access.guard = broker.guard = self._guard
            await broker.start()
        except BrokerError:
            raise
        except Exception as exc:
            if _address_in_use(exc):
                raise AddressInUse(f"the local broker cannot listen on {self._bind_text()}: the address is already in "
                                   "use (is another MQTT broker, e.g. the mosquitto service, running?)",
                                   " or ".join(k for k, on in (("local_broker.listen", self._plain),
                                                               ("local_broker.tls.listen", self._tls is not None))
                                               if on)) from exc
            raise BrokerError(f"embedded broker failed to start on {self._bind_text()}: {exc}") from exc
        self._broker, self._hook = broker, hook
        return self.address

    @property
    def listening(self) -> bool:
        """Between a successful start() and stop()."""
        return self._broker is not None

    @property
    def address(self) -> BrokerAddress:
        """The bound address of the first listener (plain, else TLS)."""
        return self._bound("default")

    @property
    def tls_address(self) -> BrokerAddress:
        """The bound address of the TLS listener."""
        if self._tls is None:
            raise BrokerError("the embedded broker has no TLS listener")
        return self._bound(self._listener_name("tls"))

    def _bound(self, name: str) -> BrokerAddress:
        """amqtt keeps the real port in a private attribute: read it only here."""
        if self._broker is None:
            raise BrokerError("embedded broker is not running")
        server = self._broker._servers[name].instance
        sockname = server.sockets[0].getsockname()
        return BrokerAddress(str(sockname[0]), int(sockname[1]))

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
        sessions = [session for session, _handler in list(self._broker._sessions.values())]
        return self._guard.disconnect(sessions, identities, serials)

    def connected_clients(self) -> list[dict[str, str | None]]:
        """The clients connected now (the gateway's own identity left out): client id and, with
        authentication, the identity (device id) they logged in as; sorted by client id."""
        broker = self._broker
        if broker is None:
            return []
        out: list[dict[str, str | None]] = []
        for session, _handler in list(broker._sessions.values()):
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
    def hook_errors(self) -> int:
        return self._hook.errors if self._hook else 0

    def _presence(self) -> None:
        if self._on_presence is not None:
            self._on_presence()

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
        deliver, guard = self._on_message, self._guard
        while queue is not None and not queue.empty():
            message = queue.get_nowait()
            if deliver is not None and message is not None and message.topic and (
                    guard is None or guard.may_publish(session, str(message.topic), _retained(message))):
                deliver(str(message.topic), bytes(message.data or b""))

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
