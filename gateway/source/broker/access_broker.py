"""amqtt's broker with the gateway's access control where amqtt has no hook for it.

This subclass overrides private methods of amqtt 0.12's ``Broker`` (CONNECT handling, PUBLISH
checks, retained delivery, the DISCONNECT path) and is the one place that reads its private state
(``_servers``, ``_sessions``): re-check it on any amqtt upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import BAD_USERNAME_PASSWORD, IDENTIFIER_REJECTED, NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.constants import QOS_0
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.utils import gen_client_id

from gateway.source.access import topic_matches
from gateway.source.broker.guard import Client, Guard
from gateway.source.broker.listeners import BrokerAddress, ListenerTls
from gateway.source.identity import ConnectRequest, PeerCert

HANDLER_STOP_S = 1.0
MAX_ROUTED_TOPICS = 20_000  # topics whose "does any filter match?" answer is remembered
_LOCK_ATTR = "_edge_gateway_connect_lock"
_REFUSALS = {"bad_credentials": BAD_USERNAME_PASSWORD, "not_authorized": NOT_AUTHORIZED,
             "identifier_rejected": IDENTIFIER_REJECTED}
_RESUMED = ("will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive", "username",
            "password", "ssl_object")


@dataclass
class Routing:
    """What happened to the messages amqtt would have put in its broadcast queue."""

    queued: int = 0  # devices' messages some subscription matches: amqtt's broadcast queue
    unrouted: int = 0  # devices' messages no subscription matches: not queued (nobody to send to)
    direct: int = 0  # the gateway's own messages (commands for devices): delivered at once


@dataclass
class _ConnectLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # connections holding or waiting for it


class GatewayBroker(Broker):  # type: ignore[misc]  # amqtt ships no type hints
    """amqtt's broker with the gateway's access control where amqtt has no hook for it.

    - A CONNECT is checked (credentials, certificate, client id, will) *before* amqtt deletes or
      resumes the session of that client id, so a refused client cannot wipe another's session.
    - A second connection of the same identity and client id closes the first one.
    - A PUBLISH is checked with its retain flag (a plugin sees only the topic).
    - Retained messages go only to sessions allowed to receive them, on their own subscriptions
      (amqtt otherwise sends a connecting client retained messages for *every* subscription).
    - At a DISCONNECT, what amqtt already acknowledged is processed before the session is cleared.
    - A device's message that no subscription matches never enters amqtt's broadcast queue, and
      the gateway's own messages (commands) skip that queue: see :meth:`_broadcast_message`.
    """

    def __init__(self, config: dict[str, Any], *, guard: Guard | None, tls: ListenerTls | None,
                 deliver: Callable[[str, bytes], None] | None = None) -> None:
        self.guard = guard
        self._deliver = deliver
        self._tls = tls
        self._connect_locks: dict[str, _ConnectLock] = {}
        self._routed: dict[str, bool] = {}  # topic -> does a subscription filter match it
        self._sends: set[asyncio.Future[Any]] = set()  # outgoing deliveries of deliver_now
        self.routing = Routing()
        super().__init__(config)

    # ------------------------------------------------------------------ private state, read here only
    def bound_address(self, listener: str) -> BrokerAddress:
        """amqtt keeps the real port in a private attribute."""
        sockname = self._servers[listener].instance.sockets[0].getsockname()
        return BrokerAddress(str(sockname[0]), int(sockname[1]))

    def session_handlers(self) -> list[tuple[Any, Any]]:
        """Every session amqtt knows (connected or not) with its protocol handler."""
        return list(self._sessions.values())

    def close_listeners(self) -> None:
        for server in self._servers.values():
            instance = getattr(server, "instance", None)
            if instance is not None:
                instance.close()

    # ------------------------------------------------------------------ CONNECT
    def _create_ssl_context(self, listener: Any) -> ssl.SSLContext:
        tls = self._tls
        if tls is not None and listener.get("certfile") is not None and Path(listener["certfile"]) == tls.cert_file:
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
        await self._acquire_connect_lock(handler, session.client_id or "")
        try:
            return await self._resume_or_replace(handler, session, Client(verdict.identity, verdict.serial, handler))
        except BaseException:
            self._release_connect_lock(handler)
            raise

    async def _acquire_connect_lock(self, handler: Any, client_id: str) -> None:
        """One connect per client id at a time, from here until amqtt has started the connection's
        handler: a connection never replaces one that is still being set up (whose disconnect
        could not be signalled yet), so exactly one of several simultaneous connections remains."""
        entry = self._connect_locks.setdefault(client_id, _ConnectLock())
        entry.users += 1
        try:
            await entry.lock.acquire()
        except BaseException:
            entry.users -= 1
            raise
        setattr(handler, _LOCK_ATTR, client_id)

    async def _resume_or_replace(self, handler: Any, session: Any, client: Client) -> tuple[Any, Any]:
        client_id = session.client_id
        existing = self._sessions.get(client_id) if client_id else None
        if existing is not None and existing[0].transitions.state == "connected":
            await existing[1].handle_connection_closed()  # MQTT-3.1.4-2: the new connection replaces the old
            with contextlib.suppress(asyncio.TimeoutError):  # amqtt may wait forever for the old reader
                await asyncio.wait_for(existing[1].stop(), HANDLER_STOP_S)
        if session.clean_session:
            if client_id:
                await self._delete_session(client_id)
            else:
                session.client_id = gen_client_id()
            session.parent = 0
        elif existing is not None:
            old = existing[0]
            for name in _RESUMED:
                setattr(old, name, getattr(session, name))
            session = old
            session.parent = 1
        else:
            session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        Guard.admit(session, client)
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

    # ------------------------------------------------------------------ routing
    def has_route(self, topic: str) -> bool:
        """Whether any subscription filter matches ``topic`` (remembered per topic until the next
        SUBSCRIBE: only a new filter can turn a no into a yes)."""
        routed = self._routed.get(topic)
        if routed is None:
            if len(self._routed) >= MAX_ROUTED_TOPICS:
                self._routed.clear()
            routed = self._routed[topic] = any(self._matches(topic, f) for f in self._subscriptions)
        return routed

    async def add_subscription(self, subscription: tuple[str, int], session: Any) -> int:
        self._routed.clear()
        return await super().add_subscription(subscription, session)  # type: ignore[no-any-return]

    async def _broadcast_message(self, session: Any, topic: str | None, data: Any,
                                 force_qos: int | None = None) -> None:
        """amqtt puts every accepted PUBLISH in one broadcast queue and takes one message from it per
        pass of the event loop (a task and a wait each), matching it against every filter. Under
        load that queue grows by hundreds, and a command for a device waited behind all of them.
        A device's message that no filter matches (telemetry, normally) would only be matched and
        discarded there, so it is not queued; the gateway's own messages (``session`` None: commands
        for devices) are delivered at once (:meth:`deliver_now`).

        A device's accepted PUBLISH (``session`` set, no ``force_qos``: a will has one) is also
        handed to the gateway here, in the client's own loop, instead of through a plugin event
        (a task per message, one more pass of the loop before the ingest queue sees it)."""
        if session is not None and force_qos is None and topic is not None and self._deliver is not None:
            self._deliver(str(topic), bytes(data or b""))  # must not raise: EmbeddedBroker guards it
        if topic is not None and not self.has_route(topic):
            if session is not None:
                self.routing.unrouted += 1
            return
        if session is None and topic is not None and data is not None:
            self.routing.direct += 1
            await self.deliver_now(topic, bytes(data), force_qos)
            return
        self.routing.queued += 1
        await super()._broadcast_message(session, topic, data, force_qos)

    async def deliver_now(self, topic: str, data: bytes, force_qos: int | None) -> None:
        """What amqtt's broadcast loop does with one message, done now: each subscriber allowed to
        receive it gets it (a disconnected persistent, authenticated session keeps it for later).
        Called for the gateway's messages one at a time, so they leave in the order given."""
        broadcast = {"session": None, "topic": topic, "data": data}
        for topic_filter, subscriptions in list(self._subscriptions.items()):
            if not self._matches(topic, topic_filter):
                continue
            for session, sub_qos in list(subscriptions):
                qos = sub_qos if force_qos is None else force_qos
                if not await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
                    continue
                if session.transitions.state != "connected":
                    if not session.clean_session and qos > QOS_0 and not session.is_anonymous:
                        await self._retain_broadcast_message(broadcast, qos, session)
                    continue
                handler = self._get_handler(session)
                if handler is not None:
                    send = asyncio.ensure_future(handler.mqtt_publish(topic, data, qos, retain=False))
                    self._sends.add(send)
                    send.add_done_callback(self._sent)

    async def shutdown(self) -> None:
        for send in list(self._sends):  # as amqtt cancels its own broadcast tasks
            send.cancel()
        await super().shutdown()

    def _sent(self, send: asyncio.Future[Any]) -> None:
        self._sends.discard(send)
        if not send.cancelled() and send.exception() is not None:
            self.logger.warning("delivery of a gateway message failed: %r", send.exception())

    # ------------------------------------------------------------------ PUBLISH, DISCONNECT, retained
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
                    client_session, str(message.topic), retained(message)):
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


def retained(message: Any) -> bool:
    """Whether an incoming message was published with the retain flag."""
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
