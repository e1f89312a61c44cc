"""The embedded broker's hook boundary and the paho adapter's exception boundary, against a real
amqtt broker and real paho clients."""

from __future__ import annotations

import pytest

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.errors import PermanentBridgeError
from bridge.mqtt.types import ClientSettings
from gateway.errors import BrokerError
from gateway.source.broker import BrokerAddress, EmbeddedBroker
from tests.support import eventually


async def _client(addr: BrokerAddress, client_id: str) -> MqttConnection:
    return await MqttConnection.open(f"mqtt://{addr.host}:{addr.port}",
                                     ClientSettings(client_id=client_id, protocol="3.1.1"))


async def test_presence_callback_given_at_construction_fires_on_connect_and_subscribe() -> None:
    calls: list[int] = []
    broker = EmbeddedBroker("127.0.0.1", 0, on_presence=lambda: calls.append(1))
    addr = await broker.start()
    try:
        conn = await _client(addr, "p1")
        try:
            await eventually(lambda: len(calls) >= 1)
            connected = len(calls)
            await conn.subscribe([("devices/p1/commands/+", 1)])
            await eventually(lambda: len(calls) > connected)
        finally:
            await conn.close()
    finally:
        await broker.stop()


async def test_a_failing_ingest_callback_is_counted_and_later_messages_still_arrive() -> None:
    seen: list[str] = []

    def on_message(topic: str, payload: bytes) -> None:
        if payload == b"boom":
            raise RuntimeError("consumer bug")
        seen.append(topic)

    broker = EmbeddedBroker("127.0.0.1", 0, on_message=on_message)
    addr = await broker.start()
    try:
        conn = await _client(addr, "h1")
        try:
            await conn.publish("a/1", b"boom", 1)
            await conn.publish("a/2", b"ok", 1)
            await eventually(lambda: seen == ["a/2"] and broker.hook_errors == 1)
        finally:
            await conn.close()
    finally:
        await broker.stop()
    with pytest.raises(BrokerError, match="not running"):
        await broker.publish("a/3", b"late")


@pytest.mark.parametrize("bad_filter", ["a/#/b", "a+/b", ""])
async def test_an_invalid_filter_is_a_permanent_bridge_error_not_a_paho_value_error(
        amqtt_broker: EmbeddedBroker, bad_filter: str) -> None:
    addr = amqtt_broker.address
    conn = await _client(addr, "f1")
    try:
        with pytest.raises(PermanentBridgeError, match="cannot subscribe"):
            await conn.subscribe([(bad_filter, 1)])
        if not bad_filter:  # paho checks only that an unsubscribe filter is not empty
            with pytest.raises(PermanentBridgeError, match="cannot unsubscribe"):
                await conn.unsubscribe([bad_filter])
        assert await conn.subscribe([("a/+/b", 1)]) == [1]  # the session is still usable
    finally:
        await conn.close()
