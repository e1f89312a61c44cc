"""The uplink session loop: connect (with backoff, over every configured URL), announce
``online``, run the forwarder until the link drops, and start again.

The connection's last will is a retained ``offline`` on the status topic, so consumers see a
gateway that vanished; a clean stop publishes ``offline`` itself before disconnecting.

A progress watchdog runs beside the forwarder: a link on which nothing has arrived from the
broker for 1.5 keepalive periods plus a second (paho sends PINGREQ after one quiet period, within
a second, so a live broker always answers in time), or on which one record has waited longer than
``ack_timeout_s`` for its PUBACK (even while other records are being acknowledged), is torn down
and rebuilt; the records still in flight are released and sent again on the next link. A half-open
TCP link is so detected within twice the keepalive (for keepalives of 2 s and more).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from bridge.mqtt.backoff import DecorrelatedJitter
from bridge.mqtt.connect import connect_with_backoff
from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.errors import BridgeError, ConnectionLost, UplinkStopped
from bridge.mqtt.types import ClientSettings, MessageHandler, Will
from bridge.mqtt.urls import BrokerUrl
from bridge.uplink.forwarder import Forwarder

log = logging.getLogger(__name__)

STABLE_SESSION_S = 10.0
WATCHDOG_EVERY_S = 0.25
SILENCE_KEEPALIVES = 1.5
PAHO_TICK_S = 1.0  # paho checks its keepalive once a second, so its PINGREQ may be this late
ONLINE = b"online"
OFFLINE = b"offline"


class UplinkLink:
    def __init__(
        self,
        urls: Sequence[str],
        settings: ClientSettings,
        backoff: DecorrelatedJitter,
        forwarder: Forwarder,
        status_topic: str,
        *,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: MessageHandler | None = None,
        on_state: Callable[[str, str | None], None] | None = None,
        ack_timeout_s: float = 60.0,
    ) -> None:
        self._urls = list(urls)
        self._settings = replace(settings, will=Will(status_topic, OFFLINE, qos=1, retain=True))
        self._backoff = backoff
        self._forwarder = forwarder
        self._status_topic = status_topic
        self._subscriptions = list(subscriptions)
        self._on_message = on_message
        self._on_state = on_state or (lambda state, url: None)
        self.connection: MqttConnection | None = None
        self._ack_timeout_s = ack_timeout_s
        self.connects = 0
        self.disconnects = 0
        self.watchdog_trips = 0
        self.last_error = ""  # why the last attempt or session failed; cleared by a successful connect
        self.previous_error = ""  # the error a successful connect cleared

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.connection.closed

    @property
    def active_url(self) -> str | None:
        return str(self.connection.url) if self.connected and self.connection else None

    def _failed(self, url: BrokerUrl, exc: BaseException, delay: float) -> None:
        self.last_error = f"{url}: {exc}"
        log.warning("uplink connect to %s failed: %s (retry in %.1fs)", url, exc, delay)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                conn = await connect_with_backoff(
                    self._urls, self._settings, self._backoff,
                    on_message=self._on_message, on_attempt_failed=self._failed, stop=stop,
                    reset_backoff=False,
                )
            except UplinkStopped:
                return
            self.connection = conn
            self.connects += 1
            self.previous_error, self.last_error = self.last_error or self.previous_error, ""  # now history
            self._on_state("connected", str(conn.url))
            log.info("uplink connected to %s", conn.url)
            try:
                await self._session(conn, stop)
            except BridgeError as exc:
                self.last_error = str(exc)
                log.warning("uplink session on %s ended: %s", conn.url, exc)
            finally:
                if stop.is_set() and not conn.closed:
                    await self._say_offline(conn)
                await conn.close()
                self.connection = None
                self.disconnects += 1
                self._on_state("disconnected", None)

    async def _setup_step(self, conn: MqttConnection, step: Awaitable[object], what: str, stop: asyncio.Event) -> bool:
        """Await one session set-up step; False if ``stop`` came first. A broker that accepted the
        connection but does not answer within the keepalive is dropped (ConnectionLost)."""
        work = asyncio.ensure_future(step)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait({work, stopping}, timeout=self._settings.keepalive_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not work.done():
                work.cancel()
            elif not work.cancelled():
                work.exception()  # retrieved even when this coroutine is being cancelled
        if work in done:
            work.result()
            return True
        if stop.is_set():
            return False
        conn.abort()
        raise ConnectionLost(f"{conn.url}: no answer to {what} within {self._settings.keepalive_s}s")

    async def _session(self, conn: MqttConnection, stop: asyncio.Event) -> None:
        self._forwarder.mark_backlog()
        if not await self._setup_step(conn, conn.publish(self._status_topic, ONLINE, qos=1, retain=True),
                                      "the online status", stop):
            return
        if self._subscriptions and not await self._setup_step(conn, conn.subscribe(self._subscriptions),
                                                              "the subscription", stop):
            return
        started = asyncio.get_running_loop().time()
        watchdog = asyncio.ensure_future(self._watch(conn))
        try:
            await self._forwarder.pump(conn, stop)
        finally:
            watchdog.cancel()
        if asyncio.get_running_loop().time() - started >= STABLE_SESSION_S:
            self._backoff.reset()  # only a session that lasted resets the reconnect delay
        if not stop.is_set():
            reason = await conn.wait_closed()
            self.last_error = reason
            log.warning("uplink to %s lost: %s", conn.url, reason)

    def _dead_link(self, conn: MqttConnection) -> str | None:
        """Why ``conn`` looks dead, or None."""
        keepalive = self._settings.keepalive_s
        silent = time.monotonic() - conn.last_activity
        if silent > SILENCE_KEEPALIVES * keepalive + PAHO_TICK_S:
            return f"watchdog: nothing from the broker for {silent:.1f} s (keepalive {keepalive} s)"
        waited = self._forwarder.oldest_unacked_s()
        if waited > self._ack_timeout_s:
            return (f"watchdog: no PUBACK for {waited:.1f} s for the oldest record in flight "
                    f"(ack_timeout_s {self._ack_timeout_s:g})")
        return None

    async def _watch(self, conn: MqttConnection) -> None:
        while not conn.closed:
            await asyncio.sleep(WATCHDOG_EVERY_S)
            reason = self._dead_link(conn)
            if reason is not None:
                self.last_error = reason
                self.watchdog_trips += 1
                log.warning("uplink to %s: %s; reconnecting", conn.url, reason)
                conn.abort(reason)
                return

    async def _say_offline(self, conn: MqttConnection) -> None:
        try:
            await asyncio.wait_for(conn.publish(self._status_topic, OFFLINE, qos=1, retain=True), 2.0)
        except (BridgeError, asyncio.TimeoutError) as exc:
            log.debug("could not publish offline status: %s", exc)

    async def publish_now(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """Best-effort publish outside the buffer (periodic stats). False when not connected."""
        conn = self.connection
        if conn is None or conn.closed:
            return False
        try:
            await asyncio.wait_for(conn.publish(topic, payload, qos, retain), 5.0)
        except (BridgeError, asyncio.TimeoutError):
            return False
        return True
