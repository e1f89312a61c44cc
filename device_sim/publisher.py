"""An asyncio-friendly MQTT client: the only module of the simulator that imports paho.

The socket is driven by the event loop (see :mod:`device_sim.aiosocket`), the blocking connect runs
in a worker thread, and every paho callback is handed to the event loop with
``loop.call_soon_threadsafe``. A publish returns a future that resolves to True when the broker
acknowledged it (QoS 1/2) or it was written (QoS 0), and to False when the broker rejected it or the
client was closed first; pending acks are keyed by mid with get-or-create. After an unexpected
disconnect the client reconnects with exponential backoff plus jitter (so 1,000 devices do not
reconnect in lockstep); paho resends unacknowledged QoS 1 messages after the reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device_sim.aiosocket import SocketDriver
from device_sim.errors import SimConfigError, SimConnectError
from device_sim.settings import BrokerSettings

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]
_ACCEPTED = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)


class Publisher:
    """One MQTT connection. Create it, ``await connect()``, then publish from the event loop."""

    def __init__(
        self,
        settings: BrokerSettings,
        client_id: str,
        *,
        identity: str | None = None,
        subscriptions: Sequence[str] = (),
        on_message: MessageHandler | None = None,
        max_inflight: int = 20,
    ) -> None:
        """``identity``: the device id whose credentials the connection uses (default: ``client_id``)."""
        self.settings = settings
        self.client_id = client_id
        self.auth = settings.credentials.for_device(identity or client_id)
        self.reconnects = 0
        self._subscriptions = list(subscriptions)
        self._on_message_cb = on_message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future[bool]] = {}
        self._early: dict[int, asyncio.Future[bool]] = {}
        self._connected = asyncio.Event()
        self._offline = asyncio.Event()
        self._offline.set()
        self._subscribed = asyncio.Event()
        self._attempt: asyncio.Future[str | None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._ever_connected = False
        self._expect_reconnect = False
        self._closed = False
        self._driver: SocketDriver | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._socket_error: str | None = None
        self._client = self._make_client(max_inflight)

    def _make_client(self, max_inflight: int) -> mqtt.Client:
        s = self.settings
        v5 = s.mqtt_version == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
        )
        auth = self.auth
        if auth.username is not None:
            client.username_pw_set(auth.username, auth.password)
        if s.tls:
            try:
                client.tls_set(ca_certs=s.cafile, certfile=auth.certfile, keyfile=auth.keyfile,
                               cert_reqs=ssl.CERT_NONE if s.insecure else ssl.CERT_REQUIRED)
            except (OSError, ValueError) as exc:
                option = "--cert" if auth.certfile is not None else "--cafile"
                raise SimConfigError(f"TLS setup for {self.client_id} failed: {exc}", option) from exc
            if s.insecure:
                client.tls_insecure_set(True)
        client.connect_timeout = s.connect_timeout_s
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    # ---- state -------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def add_connect_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the event loop) after every successful (re)connect."""
        self._listeners.append(callback)

    # ---- lifecycle ---------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect and subscribe; raises :class:`SimConnectError` with the reason when that fails."""
        self._loop = asyncio.get_running_loop()
        driver = self._driver = SocketDriver(self._client, self._loop)
        self._client.on_socket_open = driver.on_socket_open
        self._client.on_socket_close = driver.on_socket_close
        self._client.on_socket_register_write = driver.on_register_write
        self._client.on_socket_unregister_write = driver.on_unregister_write
        driver.start()
        s = self.settings
        error = await self._attempt_connect(self._client.connect, s.host, s.port, s.keepalive_s)
        if error is None and self._subscriptions:
            try:
                await asyncio.wait_for(self._subscribed.wait(), s.connect_timeout_s)
            except asyncio.TimeoutError:
                error = "no SUBACK from the broker within the connect timeout"
        if error is not None:
            await self.close()
            who = f" as {self.auth.username!r}" if self.auth.username is not None else ""
            raise SimConnectError(f"cannot connect to {s.address}: {error} (client id {self.client_id!r}{who})")

    async def _attempt_connect(self, opener: Callable[..., Any], *args: Any) -> str | None:
        """One connection attempt: None when the broker accepted it, else the reason."""
        driver = self._require_driver()
        self._attempt = self._require_loop().create_future()
        self._socket_error = None
        self._client.on_log = self._on_log  # only while connecting: why a TLS handshake was refused
        driver.opening = True
        try:
            try:
                await asyncio.wait_for(asyncio.to_thread(opener, *args), self.settings.connect_timeout_s + 1)
            except (OSError, ValueError, asyncio.TimeoutError) as exc:
                return _reason(exc)
            finally:
                driver.opening = False
                driver.sync()
            try:
                return await asyncio.wait_for(self._attempt, self.settings.connect_timeout_s)
            except asyncio.TimeoutError:
                self._client.disconnect()
                return "no CONNACK from the broker within the connect timeout"
        finally:
            self._client.on_log = None

    async def _reconnect_loop(self, first_delay_s: float) -> None:
        s = self.settings
        delay = first_delay_s
        jitter = random.Random()
        while not self._closed and not self.connected:
            if delay > 0:
                await asyncio.sleep(delay * jitter.uniform(0.5, 1.0))
            if self._closed:
                return
            error = await self._attempt_connect(self._client.reconnect)
            if error is None:
                return
            log.debug("%s: reconnect failed: %s", self.client_id, error)
            delay = min(max(delay * 2, s.reconnect_min_s), s.reconnect_max_s)

    def _start_reconnect(self, first_delay_s: float) -> None:
        if self._closed or (self._reconnector is not None and not self._reconnector.done()):
            return
        self._reconnector = self._require_loop().create_task(self._reconnect_loop(first_delay_s))

    async def disconnect(self) -> None:
        """Disconnect on purpose (a simulated reboot); unacknowledged publishes are resent later."""
        self._expect_reconnect = True
        self._connected.clear()
        if self._reconnector is not None:
            self._reconnector.cancel()
        self._client.disconnect()
        await self._wait_socket_closed()

    def reconnect(self) -> None:
        """Start connecting again after :meth:`disconnect`, retrying with backoff until it works."""
        self._start_reconnect(0.0)

    async def close(self) -> None:
        """Disconnect for good; publishes still waiting for an ack resolve to False."""
        if self._closed:
            return
        self._closed = True
        self._connected.clear()
        if self._reconnector is not None:
            self._reconnector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnector
        self._client.disconnect()
        await self._wait_socket_closed()
        if self._driver is not None:
            self._driver.stop()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_result(False)

    async def _wait_socket_closed(self, timeout_s: float = 2.0) -> None:
        """Let the event loop write the DISCONNECT packet (paho closes the socket after it)."""
        if self._client.socket() is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._offline.wait(), timeout_s)

    # ---- publishing --------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int) -> asyncio.Future[bool] | None:
        """Hand a message to paho. None means "not connected, not taken" (QoS 0 only: paho keeps
        QoS 1/2 messages while disconnected and sends them after the reconnect)."""
        loop = self._require_loop()
        info = self._client.publish(topic, payload, qos=qos, retain=False)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            return None
        if info.rc not in _ACCEPTED:
            log.warning("%s: publish to %s refused by the client: %s", self.client_id, topic,
                        mqtt.error_string(info.rc))
            failed: asyncio.Future[bool] = loop.create_future()
            failed.set_result(False)
            return failed
        fut = self._early.pop(info.mid, None)  # get-or-create: the ack may have been handled first
        if fut is None:
            fut = self._pending[info.mid] = loop.create_future()
        return fut

    def _resolve(self, mid: int, ok: bool) -> None:
        if self._closed:
            return
        fut = self._pending.pop(mid, None)
        if fut is None:
            fut = self._early[mid] = self._require_loop().create_future()
        if not fut.done():
            fut.set_result(ok)

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("Publisher.connect() was not awaited")
        return self._loop

    def _require_driver(self) -> SocketDriver:
        if self._driver is None:
            raise RuntimeError("Publisher.connect() was not awaited")
        return self._driver

    # ---- paho callbacks: handed to the event loop, nothing else ------------------------------
    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed while paho was still running
            loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode,
                    _p: Properties | None) -> None:
        if not rc.is_failure and self._subscriptions:
            client.subscribe([(topic, 1) for topic in self._subscriptions])
        self._call(self._handle_connect, None if not rc.is_failure else f"broker refused: {rc}")

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Properties | None) -> None:
        self._call(self._handle_disconnect, str(rc))

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Properties | None) -> None:
        self._call(self._resolve, mid, not rc.is_failure)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, _rcs: list[ReasonCode],
                      _p: Properties | None) -> None:
        self._call(self._subscribed.set)

    def _on_log(self, _c: mqtt.Client, _u: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self._socket_error = text  # e.g. "failed to receive on socket: [SSL: ...] certificate unknown"

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if self._on_message_cb is not None:
            self._call(self._on_message_cb, message.topic, bytes(message.payload))

    # ---- event-loop side of the callbacks ----------------------------------------------------
    def _handle_connect(self, error: str | None) -> None:
        if self._attempt is not None and not self._attempt.done():
            self._attempt.set_result(error)
        if error is not None or self._closed:
            return
        if self._ever_connected and not self._expect_reconnect:
            self.reconnects += 1
            log.info("%s: reconnected", self.client_id)
        self._ever_connected = True
        self._expect_reconnect = False
        self._offline.clear()
        self._connected.set()
        for callback in list(self._listeners):
            callback()

    def _handle_disconnect(self, reason: str) -> None:
        self._connected.clear()
        self._offline.set()
        self._subscribed.clear()
        if self._attempt is not None and not self._attempt.done():
            self._attempt.set_result(f"connection closed before CONNACK ({self._socket_error or reason})")
        if self._closed or self._expect_reconnect:
            return
        if self._ever_connected:
            log.warning("%s: connection lost (%s), reconnecting", self.client_id, reason)
            self._start_reconnect(self.settings.reconnect_min_s)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
