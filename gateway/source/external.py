"""Ingest from an external local broker (e.g. mosquitto on the Pi): subscribe as a client.

The gateway's session is persistent (clean start off), so messages published while the gateway
restarts are queued by the broker and delivered when it is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bridge.mqtt.backoff import DecorrelatedJitter
from bridge.mqtt.connect import connect_with_backoff
from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.errors import BridgeError, UplinkStopped
from bridge.mqtt.types import ClientSettings, Message

log = logging.getLogger(__name__)


class ExternalSource:
    def __init__(
        self,
        url: str,
        settings: ClientSettings,
        filters: list[str],
        offer: Callable[[str, bytes], None],
    ) -> None:
        self._url = url
        self._settings = settings
        self._filters = [(f, 1) for f in filters]
        self._offer = offer
        self.connection: MqttConnection | None = None

    def _on_message(self, msg: Message) -> None:
        self._offer(msg.topic, msg.payload)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = DecorrelatedJitter(0.5, 15.0)
        while not stop.is_set():
            try:
                conn = await connect_with_backoff([self._url], self._settings, backoff,
                                                  on_message=self._on_message, stop=stop)
            except UplinkStopped:
                return
            self.connection = conn
            try:
                await conn.subscribe(self._filters)
                log.info("ingesting from local broker %s", conn.url)
                closed = asyncio.ensure_future(conn.wait_closed())
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
                stopping.cancel()
            except BridgeError as exc:
                log.warning("local broker session ended: %s", exc)
            finally:
                await conn.close()
                self.connection = None

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        conn = self.connection
        if conn is None:
            raise BridgeError("not connected to the local broker")
        await conn.publish(topic, payload, qos)
