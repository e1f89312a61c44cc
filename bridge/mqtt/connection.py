"""paho-mqtt adapter: one MQTT session as an asyncio object. The project's only paho import.

Threading model: paho runs its network loop in its own thread (``loop_start``). Every paho
callback only converts its arguments to plain values and hands them to the asyncio loop with
``loop.call_soon_threadsafe`` (FIFO, so order is preserved); futures, the ``on_message`` callback
and all bookkeeping run on the event loop. The blocking TCP/TLS connect runs in a worker thread.

One :class:`MqttConnection` is one session. A fresh paho ``Client`` is built for every connection
and never reconnects (``reconnect_on_failure=False``): paho would otherwise replay its RAM queue
after a reconnect, while in this project the disk buffer upstream is the source of truth. paho's
own queue is bounded to ``max_inflight`` messages; a publish beyond that raises
:class:`~bridge.mqtt.errors.UplinkBusy` instead of queueing in RAM.

Delivery semantics of :meth:`MqttConnection.publish`: the returned future resolves when QoS 1/2 is
acknowledged (PUBACK/PUBCOMP; an MQTT 5 failure reason code fails it with
:class:`~bridge.mqtt.errors.PublishRejected`) or, for QoS 0, when the packet was written to the socket.
When the link drops every pending future fails with :class:`~bridge.mqtt.errors.ConnectionLost`.

Retained messages on MQTT 3.1.1: a broker delivers a message that was published retained to
clients already subscribed *without* the retain flag, so it looks live. For topics listed in
``ClientSettings.retain_check_prefixes`` such a message waits for a retain check: SUBSCRIBE to its
exact topic, then UNSUBSCRIBE. The broker sends the topic's retained message, flagged, between the
SUBACK and the UNSUBACK (brokers handle one client's packets in order), and it reaches
``on_message`` first; the unflagged copy follows. The consumer (e.g. the command router) thus sees
the retained copy before the live one and can refuse both. A copy identical to one being checked
(the check's own subscription overlaps) is dropped. If the link drops before the check completes
the message is handed on flagged as retained (it could not be shown not to be). With MQTT 5,
``retain_as_published`` keeps the flag and no check is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.mqtt.errors import (
    BridgeError,
    ConnectFailed,
    ConnectionLost,
    ConnectRefused,
    PermanentBridgeError,
    PublishRejected,
    SubscribeFailed,
    TransientBridgeError,
    UplinkBusy,
)
from bridge.mqtt.types import ClientSettings, ConnectInfo, Message, MessageHandler, TlsSettings
from bridge.mqtt.urls import BrokerUrl, parse_broker_url

__all__ = ["MqttConnection"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# CONNACK reason codes worth retrying unchanged: unspecified, implementation specific, server
# unavailable, server busy, quota exceeded, use another server, server moved, rate exceeded.
_TRANSIENT_CONNACK = frozenset({0x80, 0x83, 0x88, 0x89, 0x97, 0x9C, 0x9D, 0x9F})
_CLOSE_GRACE_S = 2.0
# MQTT 5 properties exposed on Message.properties / accepted by publish(), by our snake_case name.
_PROPERTY_NAMES = {
    "message_expiry_interval": "MessageExpiryInterval",
    "content_type": "ContentType",
    "payload_format_indicator": "PayloadFormatIndicator",
    "response_topic": "ResponseTopic",
    "correlation_data": "CorrelationData",
    "user_properties": "UserProperty",
}


@dataclass
class _Pending:
    future: asyncio.Future[None]
    topic: str
    qos: int


class MqttConnection:
    """ONE connected MQTT session; build it with :meth:`open`.

    A new paho Client is created per connection so that paho never replays its RAM queue after a
    reconnect (the disk buffer upstream is the source of truth). All methods must be called from
    the event loop that opened the connection.
    """

    info: ConnectInfo
    last_activity: float
    """``time.monotonic()`` when the last packet (any kind, PINGRESP included) was received."""

    def __init__(
        self, url: BrokerUrl, settings: ClientSettings, loop: asyncio.AbstractEventLoop,
        on_message: MessageHandler | None,
    ) -> None:
        """Private: use :meth:`open`."""
        self.url = url
        self.settings = settings
        self.callback_errors = 0
        self.last_activity = time.monotonic()
        self._loop = loop
        self._on_message = on_message
        self._pending: dict[int, _Pending] = {}
        self._subscriptions: dict[int, asyncio.Future[list[int]]] = {}  # SUBACK and UNSUBACK by mid
        self._checking: set[tuple[str, bytes]] = set()  # messages waiting for their retain check
        self._checks: set[asyncio.Task[None]] = set()
        self._connack: asyncio.Future[None] = loop.create_future()
        self._closed_event = asyncio.Event()
        self._closed = False
        self._closing = False
        self._close_reason = ""
        self._our_reason: str | None = None
        self._lock = threading.Lock()
        self._abandoned = False
        self._started = False
        self._client = self._make_client()

    # ------------------------------------------------------------------ opening
    @classmethod
    async def open(
        cls, url: BrokerUrl | str, settings: ClientSettings, *, on_message: MessageHandler | None = None,
    ) -> MqttConnection:
        """Connect and wait for a successful CONNACK (at most ``settings.connect_timeout_s``).

        Raises :class:`ConnectFailed` (network, timeout, TLS, transient refusal),
        :class:`ConnectRefused` (credentials, authorization, protocol), :class:`InvalidUrl`, or
        :class:`PermanentBridgeError` for unusable settings (e.g. unreadable TLS files).
        """
        broker = url if isinstance(url, BrokerUrl) else parse_broker_url(url)
        try:
            conn = cls(broker, settings, asyncio.get_running_loop(), on_message)
        except ssl.SSLError as err:
            raise PermanentBridgeError(
                f"invalid client settings for {broker}: cannot load the TLS certificate/key "
                f"({err.reason or err}; wrong key_password?)") from err
        except (ValueError, OSError) as err:  # e.g. unreadable TLS files
            raise PermanentBridgeError(f"invalid client settings for {broker}: {err}") from err
        try:
            await conn._connect()
        except BaseException:
            conn._discard()
            raise
        return conn

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            clean_session=None if v5 else s.clean_start,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
            manual_ack=s.manual_ack,
        )
        username = s.username if s.username is not None else self.url.username
        password = s.password if s.password is not None else self.url.password
        if username is not None:
            client.username_pw_set(username, password)
        tls = s.tls or (TlsSettings() if self.url.tls else None)
        if tls is not None:
            client.tls_set(
                ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                # "" rather than None: with None OpenSSL would prompt on the terminal for the
                # password of an encrypted key, hanging a daemon; "" fails with an error instead.
                keyfile_password=tls.key_password if tls.key_password is not None else "",
                cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED,
            )
        if s.will is not None:
            client.will_set(s.will.topic, s.will.payload, s.will.qos, s.will.retain)
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(s.max_inflight)
        client.connect_timeout = s.connect_timeout_s
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_message_paho
        client.on_log = self._on_log
        return client

    async def _connect(self) -> None:
        deadline = self._loop.time() + self.settings.connect_timeout_s
        try:
            await asyncio.to_thread(self._blocking_connect)
        except OSError as err:  # refused, unreachable, DNS, timeout, TLS handshake/verification
            raise ConnectFailed(f"cannot connect to {self.url}: {_describe_os_error(err)}") from err
        except ValueError as err:
            raise PermanentBridgeError(f"cannot connect to {self.url}: {err}") from err
        remaining = max(deadline - self._loop.time(), 0.1)
        try:
            await asyncio.wait_for(asyncio.shield(self._connack), remaining)
        except asyncio.TimeoutError:
            raise ConnectFailed(
                f"no CONNACK from {self.url} within {self.settings.connect_timeout_s:g} s"
            ) from None

    def _blocking_connect(self) -> None:
        """Worker thread: TCP (+TLS) connect, send CONNECT, start paho's network thread."""
        s = self.settings
        if s.protocol == "5":
            props = _new_properties(PacketTypes.CONNECT)
            if s.session_expiry_s > 0:
                props.SessionExpiryInterval = s.session_expiry_s
            self._client.connect(self.url.host, self.url.port, s.keepalive_s,
                                 clean_start=s.clean_start, properties=props)
        else:
            self._client.connect(self.url.host, self.url.port, s.keepalive_s)
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            # MQTT packets are small and latency matters more than packet count: without this a
            # response sent right after an incoming PUBACK waits for the peer's delayed ACK (~40 ms).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._abandoned:  # open() was cancelled or timed out meanwhile
                sock = self._client.socket()
                if sock is not None:
                    sock.close()
                return
            self._client.loop_start()
            self._started = True

    def _discard(self) -> None:
        """Clean up after a failed or cancelled open(), whatever stage the connect reached."""
        self._connack.cancel()  # nobody awaits it any more
        with self._lock:
            self._abandoned = True
            started = self._started
        if started:
            self.abort()

    # ------------------------------------------------------------------ paho thread
    # These run in paho's network thread: convert to plain values and marshal to the loop.
    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        # paho logs every packet it handles; this is the only way to see PINGRESPs arrive.
        if buf.startswith("Received"):
            self.last_activity = time.monotonic()
        elif buf.startswith("Caught exception"):  # a bug in one of our callbacks
            log.error("paho (%s): %s", self.url, buf)
        elif level in (mqtt.MQTT_LOG_ERR, mqtt.MQTT_LOG_WARNING):  # socket errors: we report those
            log.debug("paho (%s): %s", self.url, buf)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.last_activity = time.monotonic()
        # Never raise in a paho callback: an exception here kills paho's network thread.
        receive_maximum = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        self._call(self._handle_connack, flags.session_present, reason_code.value, str(reason_code),
                   reason_code.is_failure, receive_maximum)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags, reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        reason = str(reason_code)
        if flags.is_disconnect_packet_from_server:
            text = f"broker sent DISCONNECT: {reason}"
        elif reason == "Unspecified error":  # paho's mapping of MQTT_ERR_CONN_LOST
            text = "connection lost"
        else:
            text = reason
        self._call(self._handle_closed, text)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties,
    ) -> None:
        self._call(self._handle_ack, mid, reason_code.value, str(reason_code), reason_code.is_failure)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
        properties: Properties,
    ) -> None:
        self._call(self._handle_suback, mid, [rc.value for rc in reason_codes])

    def _on_unsubscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._call(self._handle_suback, mid, [rc.value for rc in reason_codes])

    def _on_message_paho(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            log.warning("dropping a message with a non-UTF-8 topic from %s", self.url)
            return
        message = Message(topic=topic, payload=bytes(msg.payload), qos=msg.qos, retain=bool(msg.retain),
                          properties=_properties_to_dict(msg.properties), mid=msg.mid)
        self._call(self._deliver, message)

    # ------------------------------------------------------------------ event loop side
    def _handle_connack(
        self, session_present: bool, code: int, reason: str, failed: bool, receive_maximum: int | None,
    ) -> None:
        if self._connack.done():
            return
        if failed:
            message = f"{self.url} refused the connection: {reason} (0x{code:02X})"
            if code in _TRANSIENT_CONNACK:
                self._connack.set_exception(ConnectFailed(message, reason_code=code))
            else:
                self._connack.set_exception(ConnectRefused(message, reason_code=code, reason=reason))
            return
        rmax = self.settings.max_inflight if receive_maximum is None else int(receive_maximum)
        self.info = ConnectInfo(
            url=self.url, receive_maximum=rmax, session_present=session_present,
            protocol=self.settings.protocol, inflight_window=min(rmax, self.settings.max_inflight),
        )
        self._connack.set_result(None)

    def _handle_closed(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_reason = self._our_reason or reason
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if not entry.future.done():
                entry.future.set_exception(
                    ConnectionLost(f"{self.url}: {self._close_reason} before the broker acknowledged")
                )
        subscriptions, self._subscriptions = self._subscriptions, {}
        for fut in subscriptions.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(f"{self.url}: {self._close_reason} before SUBACK"))
        if not self._connack.done():
            if reason == "Protocol error":  # e.g. an MQTT 3.1.1-only broker refusing the version
                self._connack.set_exception(ConnectRefused(
                    f"{self.url} closed the connection before CONNACK: {reason}", reason_code=0x82,
                    reason=reason))
            else:
                self._connack.set_exception(ConnectFailed(
                    f"{self.url} closed the connection before CONNACK: {self._close_reason}"))
        self._closed_event.set()

    def _handle_ack(self, mid: int, code: int, reason: str, failed: bool) -> None:
        entry = self._pending.get(mid)
        if entry is None:
            # get-or-create: the ack won a race with publish(); publish() picks this result up.
            entry = self._pending[mid] = _Pending(self._loop.create_future(), "", 0)
        elif entry.future.done():  # cancelled by its owner
            del self._pending[mid]
            return
        else:
            del self._pending[mid]
        if failed:
            entry.future.set_exception(PublishRejected(entry.topic, code, reason))
        else:
            entry.future.set_result(None)

    def _handle_suback(self, mid: int, codes: list[int]) -> None:
        fut = self._subscriptions.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(codes)

    def _deliver(self, message: Message) -> None:
        if self._on_message is None:
            return
        if self._needs_retain_check(message):
            key = (message.topic, message.payload)
            if key in self._checking:
                return  # the same message again, through the check's own subscription
            self._checking.add(key)
            task = self._loop.create_task(self._deliver_checked(message, key))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)
            return
        self._hand_on(message)

    def _needs_retain_check(self, message: Message) -> bool:
        return (not message.retain and bool(message.payload) and self.settings.protocol != "5"
                and message.topic.startswith(self.settings.retain_check_prefixes))

    async def _deliver_checked(self, message: Message, key: tuple[str, bytes]) -> None:
        try:
            await self.subscribe([(message.topic, 0)])  # the broker sends its retained copy, flagged
            await self.unsubscribe([message.topic])  # ... before this is acknowledged
        except BridgeError as exc:
            log.warning("retain check of a message on %s failed (%s): handed on as retained", message.topic, exc)
            message = replace(message, retain=True)
        finally:
            self._checking.discard(key)
        self._hand_on(message)

    def _hand_on(self, message: Message) -> None:
        assert self._on_message is not None
        try:
            self._on_message(message)
        except Exception:  # a consumer bug must not break delivery of the following messages
            self.callback_errors += 1
            log.exception("on_message callback failed for topic %r", message.topic)

    # ------------------------------------------------------------------ public API
    @property
    def closed(self) -> bool:
        """True once the session is over (link dropped, closed or aborted)."""
        return self._closed

    @property
    def pending_count(self) -> int:
        """Publishes sent and not yet acknowledged (or, for QoS 0, not yet written)."""
        return sum(1 for entry in self._pending.values() if not entry.future.done())

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, *,
        properties: dict[str, Any] | None = None,
    ) -> asyncio.Future[None]:
        """Send a PUBLISH; the future resolves on PUBACK/PUBCOMP (QoS 1/2) or once written (QoS 0).

        Raises :class:`ConnectionLost` at once if the session is closed (nothing is queued in RAM),
        :class:`UplinkBusy` when ``max_inflight`` publishes are already unacknowledged. The future
        fails with :class:`PublishRejected` on an MQTT 5 failure reason code, or with
        :class:`ConnectionLost` when the link drops first. ``properties`` (MQTT 5 only; ignored
        for 3.1.1) takes the snake_case names of :class:`Message.properties`.
        """
        if self._closed or self._closing:
            raise ConnectionLost(f"{self.url}: connection is closed ({self._close_reason or 'closing'})")
        if qos > 0 and self._unacked() >= self.info.inflight_window:
            # paho cannot change its inflight limit after CONNECT, so the broker's Receive Maximum
            # (which paho ignores) is enforced here.
            raise UplinkBusy(f"{self.url}: {self.info.inflight_window} publishes already unacknowledged")
        props = self._publish_properties(properties)
        try:
            info = self._client.publish(topic, payload, qos, retain, props)
        except ValueError as err:
            raise PermanentBridgeError(f"cannot publish to {topic!r}: {err}") from err
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise UplinkBusy(f"{self.url}: {self.settings.max_inflight} publishes already unacknowledged")
        if info.rc in (MQTTErrorCode.MQTT_ERR_NO_CONN, MQTTErrorCode.MQTT_ERR_CONN_LOST):
            raise ConnectionLost(f"{self.url}: not connected ({mqtt.error_string(info.rc)})")
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise TransientBridgeError(f"{self.url}: publish failed: {mqtt.error_string(info.rc)}")
        entry = self._pending.get(info.mid)
        if entry is not None and entry.future.done():  # the ack arrived first (see _handle_ack)
            del self._pending[info.mid]
            return entry.future
        fut: asyncio.Future[None] = self._loop.create_future()
        self._pending[info.mid] = _Pending(fut, topic, qos)
        return fut

    @property
    def free_slots(self) -> int:
        """QoS>0 publishes that may still be sent before :class:`UplinkBusy` (the inflight window)."""
        return max(0, self.info.inflight_window - self._unacked())

    def _unacked(self) -> int:
        return sum(1 for entry in self._pending.values() if entry.qos > 0 and not entry.future.done())

    def _publish_properties(self, properties: dict[str, Any] | None) -> Properties | None:
        if not properties or self.settings.protocol != "5":
            return None
        props = _new_properties(PacketTypes.PUBLISH)
        for key, value in properties.items():
            name = _PROPERTY_NAMES.get(key)
            if name is None:
                raise PermanentBridgeError(f"unsupported publish property {key!r}")
            setattr(props, name, list(value) if key == "user_properties" else value)
        return props

    async def subscribe(self, filters: list[tuple[str, int]]) -> list[int]:
        """Subscribe and wait for SUBACK; return the granted QoS per filter, in order.

        Raises :class:`SubscribeFailed` if the broker refused any filter (code >= 0x80).
        """
        if not filters:
            raise ValueError("subscribe() needs at least one (filter, qos) pair")
        if self._closed or self._closing:
            raise ConnectionLost(f"{self.url}: connection is closed ({self._close_reason or 'closing'})")
        rc, mid = self._client.subscribe(self._subscribe_options(filters))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionLost(f"{self.url}: subscribe failed: {mqtt.error_string(rc)}")
        fut: asyncio.Future[list[int]] = self._loop.create_future()
        self._subscriptions[mid] = fut
        codes = await fut
        refused = [name for (name, _), code in zip(filters, codes, strict=False) if code >= 0x80]
        if refused:
            raise SubscribeFailed(f"{self.url} refused subscription(s) {refused}: codes {codes}", codes)
        return codes

    def _subscribe_options(self, filters: list[tuple[str, int]]) -> list[tuple[str, Any]]:
        if self.settings.protocol != "5" or not self.settings.retain_as_published:
            return list(filters)
        return [(topic, SubscribeOptions(qos=qos, retainAsPublished=True)) for topic, qos in filters]

    async def unsubscribe(self, topics: list[str]) -> None:
        """Unsubscribe and wait for UNSUBACK."""
        if self._closed or self._closing:
            raise ConnectionLost(f"{self.url}: connection is closed ({self._close_reason or 'closing'})")
        rc, mid = self._client.unsubscribe(topics)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionLost(f"{self.url}: unsubscribe failed: {mqtt.error_string(rc)}")
        fut: asyncio.Future[list[int]] = self._loop.create_future()
        self._subscriptions[mid] = fut
        await fut

    def ack(self, message: Message) -> None:
        """Acknowledge an incoming QoS 1/2 message (only with ``ClientSettings.manual_ack``)."""
        if self.settings.manual_ack and message.qos > 0 and not self._closed:
            self._client.ack(message.mid, message.qos)

    async def wait_closed(self) -> str:
        """Wait until the session is over; return why (e.g. ``"connection lost"``)."""
        await self._closed_event.wait()
        return self._close_reason

    async def close(self) -> None:
        """Send DISCONNECT (the will is discarded), stop paho's thread and fail what is pending
        with :class:`ConnectionLost`. Idempotent."""
        if not self._closed and not self._closing:
            self._closing = True
            self._our_reason = "closed by client"
            self._client.disconnect()
        try:
            await asyncio.wait_for(self._closed_event.wait(), _CLOSE_GRACE_S)
        except asyncio.TimeoutError:  # DISCONNECT could not be written (stalled link): drop it
            self.abort()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closed_event.wait(), _CLOSE_GRACE_S)
        with contextlib.suppress(asyncio.TimeoutError):  # paho's thread is a daemon: never hang here
            await asyncio.wait_for(asyncio.to_thread(self._client.loop_stop), _CLOSE_GRACE_S)
        self._handle_closed("closed by client")

    def abort(self, reason: str = "aborted by client") -> None:
        """Drop the connection without DISCONNECT (the broker then publishes the will).

        For watchdogs: returns at once; :attr:`closed` turns true shortly after and
        :meth:`wait_closed` returns ``reason``.
        """
        if self._closed:
            return
        self._closing = True
        if self._our_reason is None:
            self._our_reason = reason
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            # shutdown() (not close()) is safe while paho's thread selects on the socket: the thread
            # sees EOF, reports the disconnect and exits. socket.socket.shutdown bypasses SSLSocket's
            # version, which would tear down the TLS object under the network thread.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<MqttConnection {self.url} client_id={self.settings.client_id!r} {state}>"


def _new_properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def _properties_to_dict(props: Properties | None) -> dict[str, Any]:
    if props is None:
        return {}
    out: dict[str, Any] = {}
    for key, name in _PROPERTY_NAMES.items():
        value = getattr(props, name, None)
        if value is not None:
            out[key] = [tuple(pair) for pair in value] if key == "user_properties" else value
    return out


def _describe_os_error(err: OSError) -> str:
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {err.verify_message}"
    if isinstance(err, ssl.SSLError):
        return f"TLS error: {err.reason or err}"
    if isinstance(err, socket.timeout):
        return "timed out"
    return err.strerror or str(err) or type(err).__name__
