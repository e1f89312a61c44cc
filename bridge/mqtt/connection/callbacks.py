"""The thread boundary: paho's callbacks run in paho's network thread. Each one only converts its
arguments to plain values and hands them to the event loop with ``loop.call_soon_threadsafe``
(FIFO, so order is preserved); everything else runs on the loop. Never raise in here: an exception
in a paho callback kills paho's network thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.mqtt.connection.bookkeeping import Bookkeeping
from bridge.mqtt.connection.paho_client import properties_to_dict
from bridge.mqtt.types import Message
from bridge.mqtt.urls import BrokerUrl

log = logging.getLogger(__package__)  # the adapter logs under its package name


class PahoCallbacks:
    """paho's callbacks for one session, marshalled to ``state`` and ``deliver`` on ``loop``."""

    last_activity: float
    """``time.monotonic()`` when the last packet (any kind, PINGRESP included) was received."""

    def __init__(self, url: BrokerUrl, loop: asyncio.AbstractEventLoop, state: Bookkeeping,
                 deliver: Callable[[Message], None]) -> None:
        self.url = url
        self.last_activity = time.monotonic()
        self._loop = loop
        self._state = state
        self._deliver = deliver

    def install(self, client: mqtt.Client) -> None:
        """paho takes its callbacks as attributes of its client."""
        client.on_connect = self.on_connect
        client.on_disconnect = self.on_disconnect
        client.on_publish = self.on_publish
        client.on_subscribe = self.on_subscribe
        client.on_unsubscribe = self.on_unsubscribe
        client.on_message = self.on_message
        client.on_log = self.on_log

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self._loop.call_soon_threadsafe(fn, *args)

    def on_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        # paho logs every packet it handles; this is the only way to see PINGRESPs arrive.
        if buf.startswith("Received"):
            self.last_activity = time.monotonic()
        elif buf.startswith("Caught exception"):  # a bug in one of our callbacks
            log.error("paho (%s): %s", self.url, buf)
        elif level in (mqtt.MQTT_LOG_ERR, mqtt.MQTT_LOG_WARNING):  # socket errors: we report those
            log.debug("paho (%s): %s", self.url, buf)

    def on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.last_activity = time.monotonic()
        receive_maximum = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        self._call(self._state.handle_connack, flags.session_present, reason_code.value, str(reason_code),
                   reason_code.is_failure, receive_maximum)

    def on_disconnect(
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
        self._call(self._state.handle_closed, text)

    def on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties,
    ) -> None:
        self._call(self._state.handle_ack, mid, reason_code.value, str(reason_code), reason_code.is_failure)

    def on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
        properties: Properties,
    ) -> None:
        self._call(self._state.handle_suback, mid, [rc.value for rc in reason_codes])

    def on_unsubscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._call(self._state.handle_suback, mid, [rc.value for rc in reason_codes])

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            log.warning("dropping a message with a non-UTF-8 topic from %s", self.url)
            return
        message = Message(topic=topic, payload=bytes(msg.payload), qos=msg.qos, retain=bool(msg.retain),
                          properties=properties_to_dict(msg.properties), mid=msg.mid)
        self._call(self._deliver, message)
