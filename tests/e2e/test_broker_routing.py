"""The embedded broker around amqtt's broadcast queue: devices' messages that no subscription
matches skip it, the gateway's own messages (commands) are delivered at once instead of waiting
behind it; what is delivered, to whom and in which order stays as before. Real amqtt broker, real
paho clients."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import ClientSettings, Message, Will
from gateway.source.broker import BrokerAddress, EmbeddedBroker
from tests.support import eventually


async def _client(addr: BrokerAddress, client_id: str, got: list[bytes] | None = None,
                  will: Will | None = None) -> MqttConnection:
    def record(msg: Message) -> None:
        if got is not None:
            got.append(msg.payload)

    return await MqttConnection.open(f"mqtt://{addr.host}:{addr.port}",
                                     ClientSettings(client_id=client_id, protocol="3.1.1", will=will),
                                     on_message=record)


@pytest.fixture
async def hooked() -> AsyncIterator[tuple[EmbeddedBroker, list[bytes]]]:
    seen: list[bytes] = []
    broker = EmbeddedBroker("127.0.0.1", 0, on_message=lambda _topic, payload: seen.append(payload))
    await broker.start()
    try:
        yield broker, seen
    finally:
        await broker.stop()


async def test_device_messages_nobody_subscribes_to_skip_the_queue_and_reach_ingest_in_order(
        hooked: tuple[EmbeddedBroker, list[bytes]]) -> None:
    broker, seen = hooked
    device = await _client(broker.address, "d1")
    try:
        for i in range(50):
            await device.publish("devices/d1/telemetry", str(i).encode(), 1)
        await eventually(lambda: len(seen) == 50)
    finally:
        await device.close()
    assert seen == [str(i).encode() for i in range(50)]
    assert (broker.routing.queued, broker.routing.unrouted) == (0, 50)


async def test_a_new_subscription_routes_a_topic_that_had_no_subscriber(
        hooked: tuple[EmbeddedBroker, list[bytes]]) -> None:
    broker, seen = hooked
    watched: list[bytes] = []
    device = await _client(broker.address, "d1")
    watcher = await _client(broker.address, "watcher", watched)
    try:
        await device.publish("devices/d1/telemetry", b"before", 1)
        await eventually(lambda: seen == [b"before"])
        assert broker.routing.unrouted == 1
        await watcher.subscribe([("devices/+/telemetry", 1)])
        for i in range(20):
            await device.publish("devices/d1/telemetry", str(i).encode(), 1)
        await eventually(lambda: len(watched) == 20)
    finally:
        await device.close()
        await watcher.close()
    assert watched == [str(i).encode() for i in range(20)]  # the message before the SUBSCRIBE is not among them
    assert broker.routing.queued == 20


async def test_commands_go_to_their_device_at_once_in_order_without_the_broadcast_queue(
        hooked: tuple[EmbeddedBroker, list[bytes]]) -> None:
    broker, _seen = hooked
    got: list[bytes] = []
    other: list[bytes] = []
    device = await _client(broker.address, "d1", got)
    bystander = await _client(broker.address, "d2", other)
    try:
        await device.subscribe([("devices/d1/commands/+", 1)])
        await bystander.subscribe([("devices/d2/commands/+", 1)])
        for i in range(30):
            await broker.publish("devices/d1/commands/ping", str(i).encode(), 1)
        await eventually(lambda: len(got) == 30)
        await broker.publish("devices/d2/commands/ping", b"last", 1)
        await eventually(lambda: other == [b"last"])
    finally:
        await device.close()
        await bystander.close()
    assert got == [str(i).encode() for i in range(30)]
    assert (broker.routing.direct, broker.routing.queued) == (31, 0)


async def test_a_command_nobody_listens_to_is_not_delivered_and_not_queued(
        hooked: tuple[EmbeddedBroker, list[bytes]]) -> None:
    broker, _seen = hooked
    got: list[bytes] = []
    device = await _client(broker.address, "d1", got)
    try:
        await device.subscribe([("devices/d1/commands/+", 1)])
        await broker.publish("devices/d9/commands/ping", b"nobody", 1)
        await broker.publish("devices/d1/commands/ping", b"mine", 1)
        await eventually(lambda: got == [b"mine"])
    finally:
        await device.close()
    assert (broker.routing.queued, broker.routing.unrouted, broker.routing.direct) == (0, 0, 1)


async def test_a_will_goes_to_subscribers_but_not_to_ingest_as_before(
        hooked: tuple[EmbeddedBroker, list[bytes]]) -> None:
    """Accepted PUBLISHes are handed to ingest by the broker itself (no plugin event); a will was
    never one of them (amqtt fires no broadcast event for it) and still is not."""
    broker, seen = hooked
    watched: list[bytes] = []
    watcher = await _client(broker.address, "watcher", watched)
    dying = await _client(broker.address, "d1", will=Will("devices/d1/events", b"gone", qos=1))
    other = await _client(broker.address, "d2")
    try:
        await watcher.subscribe([("devices/+/events", 1)])
        dying.abort()
        await eventually(lambda: watched == [b"gone"])
        await other.publish("devices/d2/events", b"after", 1)
        await eventually(lambda: seen == [b"after"] and len(watched) == 2)
    finally:
        await watcher.close()
        await dying.close()
        await other.close()
    assert watched == [b"gone", b"after"]
