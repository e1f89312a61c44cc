"""Operator requests to a gateway through the cloud broker: publish one message and wait for the
gateway's answer on a reply topic (used by ``edge-gateway command`` and ``push-config``).

The reply topic is subscribed BEFORE the request is published, so a fast answer is not missed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any, Literal

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.errors import TransientBridgeError
from bridge.mqtt.types import ANONYMOUS, ClientSettings, Login, Message
from bridge.protocol.errors import CodecError, InvalidRecord
from bridge.protocol.records import ControlRecord, decode_control, parse_control


class NoReply(TransientBridgeError):
    """No matching answer arrived within the timeout."""


async def request(
    url: str,
    publish_topic: str,
    payload: bytes,
    reply_topic: str,
    match: Callable[[ControlRecord], bool],
    timeout_s: float,
    retain: bool = False,
    protocol: Literal["5", "3.1.1"] = "5",
    login: Login = ANONYMOUS,
) -> dict[str, Any]:
    """Publish ``payload`` (QoS 1) and return the JSON object of the first valid control record on
    ``reply_topic`` for which ``match`` is true. Raises :class:`NoReply` after ``timeout_s``
    (counted from the start, connect included) and the connect errors of :meth:`MqttConnection.open`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    reply: asyncio.Future[dict[str, Any]] = loop.create_future()

    def on_message(msg: Message) -> None:
        if msg.topic != reply_topic or reply.done():
            return
        try:
            wire = decode_control(msg.payload)
            record = parse_control(wire).record
        except (CodecError, InvalidRecord):
            return
        if match(record):
            reply.set_result(wire)

    settings = ClientSettings(client_id=f"edge-operator-{uuid.uuid4().hex[:12]}", protocol=protocol,
                              username=login.username, password=login.password, tls=login.tls,
                              connect_timeout_s=max(min(timeout_s, 10.0), 0.1))
    conn = await MqttConnection.open(url, settings, on_message=on_message)
    try:
        await conn.subscribe([(reply_topic, 1)])
        try:
            await asyncio.wait_for(conn.publish(publish_topic, payload, 1, retain), max(deadline - loop.time(), 0.1))
            return await asyncio.wait_for(reply, max(deadline - loop.time(), 0.0))
        except asyncio.TimeoutError:
            raise NoReply(f"no answer on {reply_topic} within {timeout_s:g} s") from None
    finally:
        await conn.close()
