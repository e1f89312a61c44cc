"""The event-loop side of one MQTT session: the CONNACK future, the table of publishes waiting for
their acknowledgement, the SUBACK/UNSUBACK waiters, and the session's end. Pure asyncio: the paho
callbacks (:mod:`.callbacks`) hand their plain values to these methods on the loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bridge.mqtt.errors import ConnectFailed, ConnectionLost, ConnectRefused, PublishRejected
from bridge.mqtt.types import ClientSettings, ConnectInfo
from bridge.mqtt.urls import BrokerUrl

# CONNACK reason codes worth retrying unchanged: unspecified, implementation specific, server
# unavailable, server busy, quota exceeded, use another server, server moved, rate exceeded.
_TRANSIENT_CONNACK = frozenset({0x80, 0x83, 0x88, 0x89, 0x97, 0x9C, 0x9D, 0x9F})


@dataclass
class _Pending:
    future: asyncio.Future[None]
    topic: str
    qos: int


class Bookkeeping:
    """What one session waits for, and whether it is over. Every method runs on the loop."""

    info: ConnectInfo

    def __init__(self, url: BrokerUrl, settings: ClientSettings, loop: asyncio.AbstractEventLoop) -> None:
        self.url = url
        self.settings = settings
        self._loop = loop
        self._pending: dict[int, _Pending] = {}
        self._subscriptions: dict[int, asyncio.Future[list[int]]] = {}  # SUBACK and UNSUBACK by mid
        self.connack: asyncio.Future[None] = loop.create_future()
        self.closed_event = asyncio.Event()
        self.closed = False
        self.closing = False
        self.close_reason = ""
        self.our_reason: str | None = None

    # ------------------------------------------------------------------ what the session waits for
    def check_open(self) -> None:
        """Raise :class:`ConnectionLost` if the session is over or being closed."""
        if self.closed or self.closing:
            raise ConnectionLost(f"{self.url}: connection is closed ({self.close_reason or 'closing'})")

    def expect_ack(self, mid: int, topic: str, qos: int) -> asyncio.Future[None]:
        """The future of the publish ``mid``, resolved by its acknowledgement."""
        entry = self._pending.get(mid)
        if entry is not None and entry.future.done():  # the ack arrived first (see handle_ack)
            del self._pending[mid]
            return entry.future
        fut: asyncio.Future[None] = self._loop.create_future()
        self._pending[mid] = _Pending(fut, topic, qos)
        return fut

    def expect_suback(self, mid: int) -> asyncio.Future[list[int]]:
        fut: asyncio.Future[list[int]] = self._loop.create_future()
        self._subscriptions[mid] = fut
        return fut

    @property
    def pending_count(self) -> int:
        return sum(1 for entry in self._pending.values() if not entry.future.done())

    def unacked(self) -> int:
        return sum(1 for entry in self._pending.values() if entry.qos > 0 and not entry.future.done())

    # ------------------------------------------------------------------ what paho reported
    def handle_connack(
        self, session_present: bool, code: int, reason: str, failed: bool, receive_maximum: int | None,
    ) -> None:
        if self.connack.done():
            return
        if failed:
            message = f"{self.url} refused the connection: {reason} (0x{code:02X})"
            if code in _TRANSIENT_CONNACK:
                self.connack.set_exception(ConnectFailed(message, reason_code=code))
            else:
                self.connack.set_exception(ConnectRefused(message, reason_code=code, reason=reason))
            return
        rmax = self.settings.max_inflight if receive_maximum is None else int(receive_maximum)
        self.info = ConnectInfo(
            url=self.url, receive_maximum=rmax, session_present=session_present,
            protocol=self.settings.protocol, inflight_window=min(rmax, self.settings.max_inflight),
        )
        self.connack.set_result(None)

    def handle_closed(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = self.our_reason or reason
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if not entry.future.done():
                entry.future.set_exception(
                    ConnectionLost(f"{self.url}: {self.close_reason} before the broker acknowledged")
                )
        subscriptions, self._subscriptions = self._subscriptions, {}
        for fut in subscriptions.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(f"{self.url}: {self.close_reason} before SUBACK"))
        if not self.connack.done():
            if reason == "Protocol error":  # e.g. an MQTT 3.1.1-only broker refusing the version
                self.connack.set_exception(ConnectRefused(
                    f"{self.url} closed the connection before CONNACK: {reason}", reason_code=0x82,
                    reason=reason))
            else:
                self.connack.set_exception(ConnectFailed(
                    f"{self.url} closed the connection before CONNACK: {self.close_reason}"))
        self.closed_event.set()

    def handle_ack(self, mid: int, code: int, reason: str, failed: bool) -> None:
        entry = self._pending.get(mid)
        if entry is None:
            # get-or-create: the ack won a race with publish(); expect_ack() picks this result up.
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

    def handle_suback(self, mid: int, codes: list[int]) -> None:
        fut = self._subscriptions.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(codes)
