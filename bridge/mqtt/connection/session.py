"""One MQTT session as an asyncio object: :class:`MqttConnection` (see the package's docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from typing import Any

from bridge.mqtt.connection import paho_client
from bridge.mqtt.connection.bookkeeping import Bookkeeping
from bridge.mqtt.connection.callbacks import PahoCallbacks
from bridge.mqtt.connection.retain_check import RetainCheck
from bridge.mqtt.errors import ConnectFailed, PermanentBridgeError, SubscribeFailed, UplinkBusy
from bridge.mqtt.types import ClientSettings, ConnectInfo, Message, MessageHandler
from bridge.mqtt.urls import BrokerUrl, parse_broker_url

_CLOSE_GRACE_S = 2.0


class MqttConnection:
    """ONE connected MQTT session; build it with :meth:`open`.

    A new paho Client is created per connection so that paho never replays its RAM queue after a
    reconnect (the disk buffer upstream is the source of truth). All methods must be called from
    the event loop that opened the connection.
    """

    def __init__(
        self, url: BrokerUrl, settings: ClientSettings, loop: asyncio.AbstractEventLoop,
        on_message: MessageHandler | None,
    ) -> None:
        """Private: use :meth:`open`."""
        self.url = url
        self.settings = settings
        self._loop = loop
        self._state = Bookkeeping(url, settings, loop)
        self._delivery = RetainCheck(settings, loop, on_message, subscribe=self.subscribe,
                                     unsubscribe=self.unsubscribe)
        self._callbacks = PahoCallbacks(url, loop, self._state, self._delivery.deliver)
        self._lock = threading.Lock()
        self._abandoned = False
        self._started = False
        self._client = paho_client.make_client(url, settings)
        self._callbacks.install(self._client)

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

    async def _connect(self) -> None:
        deadline = self._loop.time() + self.settings.connect_timeout_s
        try:
            await asyncio.to_thread(self._blocking_connect)
        except OSError as err:  # refused, unreachable, DNS, timeout, TLS handshake/verification
            raise ConnectFailed(f"cannot connect to {self.url}: {paho_client.describe_os_error(err)}") from err
        except ValueError as err:
            raise PermanentBridgeError(f"cannot connect to {self.url}: {err}") from err
        remaining = max(deadline - self._loop.time(), 0.1)
        try:
            await asyncio.wait_for(asyncio.shield(self._state.connack), remaining)
        except asyncio.TimeoutError:
            raise ConnectFailed(
                f"no CONNACK from {self.url} within {self.settings.connect_timeout_s:g} s"
            ) from None

    def _blocking_connect(self) -> None:
        """Worker thread: TCP (+TLS) connect, send CONNECT, start paho's network thread."""
        paho_client.connect(self._client, self.url, self.settings)
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
        self._state.connack.cancel()  # nobody awaits it any more
        with self._lock:
            self._abandoned = True
            started = self._started
        if started:
            self.abort()

    # ------------------------------------------------------------------ public API
    @property
    def info(self) -> ConnectInfo:
        """What the CONNACK said (set once :meth:`open` returned)."""
        return self._state.info

    @property
    def last_activity(self) -> float:
        """``time.monotonic()`` when the last packet (any kind, PINGRESP included) was received."""
        return self._callbacks.last_activity

    @property
    def callback_errors(self) -> int:
        """Exceptions the ``on_message`` consumer raised (logged; delivery went on)."""
        return self._delivery.callback_errors

    @property
    def closed(self) -> bool:
        """True once the session is over (link dropped, closed or aborted)."""
        return self._state.closed

    @property
    def pending_count(self) -> int:
        """Publishes sent and not yet acknowledged (or, for QoS 0, not yet written)."""
        return self._state.pending_count

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
        self._state.check_open()
        if qos > 0 and self._state.unacked() >= self.info.inflight_window:
            # paho cannot change its inflight limit after CONNECT, so the broker's Receive Maximum
            # (which paho ignores) is enforced here.
            raise UplinkBusy(f"{self.url}: {self.info.inflight_window} publishes already unacknowledged")
        mid = paho_client.send_publish(self._client, self.url, self.settings, topic, payload, qos, retain,
                                       properties)
        return self._state.expect_ack(mid, topic, qos)

    @property
    def free_slots(self) -> int:
        """QoS>0 publishes that may still be sent before :class:`UplinkBusy` (the inflight window)."""
        return max(0, self.info.inflight_window - self._state.unacked())

    async def subscribe(self, filters: list[tuple[str, int]]) -> list[int]:
        """Subscribe and wait for SUBACK; return the granted QoS per filter, in order.

        Raises :class:`SubscribeFailed` if the broker refused any filter (code >= 0x80).
        """
        if not filters:
            raise ValueError("subscribe() needs at least one (filter, qos) pair")
        self._state.check_open()
        mid = paho_client.send_subscribe(self._client, self.url, self.settings, filters)
        codes = await self._state.expect_suback(mid)
        refused = [name for (name, _), code in zip(filters, codes, strict=False) if code >= 0x80]
        if refused:
            raise SubscribeFailed(f"{self.url} refused subscription(s) {refused}: codes {codes}", codes)
        return codes

    async def unsubscribe(self, topics: list[str]) -> None:
        """Unsubscribe and wait for UNSUBACK."""
        self._state.check_open()
        mid = paho_client.send_unsubscribe(self._client, self.url, topics)
        await self._state.expect_suback(mid)

    def ack(self, message: Message) -> None:
        """Acknowledge an incoming QoS 1/2 message (only with ``ClientSettings.manual_ack``)."""
        if self.settings.manual_ack and message.qos > 0 and not self._state.closed:
            self._client.ack(message.mid, message.qos)

    async def wait_closed(self) -> str:
        """Wait until the session is over; return why (e.g. ``"connection lost"``)."""
        await self._state.closed_event.wait()
        return self._state.close_reason

    async def close(self) -> None:
        """Send DISCONNECT (the will is discarded), stop paho's thread and fail what is pending
        with :class:`ConnectionLost`. Idempotent."""
        state = self._state
        if not state.closed and not state.closing:
            state.closing = True
            state.our_reason = "closed by client"
            self._client.disconnect()
        try:
            await asyncio.wait_for(state.closed_event.wait(), _CLOSE_GRACE_S)
        except asyncio.TimeoutError:  # DISCONNECT could not be written (stalled link): drop it
            self.abort()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(state.closed_event.wait(), _CLOSE_GRACE_S)
        with contextlib.suppress(asyncio.TimeoutError):  # paho's thread is a daemon: never hang here
            await asyncio.wait_for(asyncio.to_thread(self._client.loop_stop), _CLOSE_GRACE_S)
        state.handle_closed("closed by client")

    def abort(self, reason: str = "aborted by client") -> None:
        """Drop the connection without DISCONNECT (the broker then publishes the will).

        For watchdogs: returns at once; :attr:`closed` turns true shortly after and
        :meth:`wait_closed` returns ``reason``.
        """
        state = self._state
        if state.closed:
            return
        state.closing = True
        if state.our_reason is None:
            state.our_reason = reason
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            # shutdown() (not close()) is safe while paho's thread selects on the socket: the thread
            # sees EOF, reports the disconnect and exits. socket.socket.shutdown bypasses SSLSocket's
            # version, which would tear down the TLS object under the network thread.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def __repr__(self) -> str:
        state = "closed" if self._state.closed else "open"
        return f"<MqttConnection {self.url} client_id={self.settings.client_id!r} {state}>"
