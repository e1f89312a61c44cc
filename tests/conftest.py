from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.broker import BrokerAddress, EmbeddedBroker
from tests.support import Mosquitto, running_mosquitto


@pytest.fixture
async def amqtt_broker() -> AsyncIterator[EmbeddedBroker]:
    """A real embedded amqtt broker on 127.0.0.1 and a free port."""
    broker = EmbeddedBroker("127.0.0.1", 0)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@pytest.fixture
def amqtt_address(amqtt_broker: EmbeddedBroker) -> BrokerAddress:
    return amqtt_broker.address


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A real mosquitto process on a free port; tests may stop/kill/restart it on the same port."""
    with running_mosquitto() as broker:
        yield broker


@pytest.fixture
def persistent_mosquitto() -> Iterator[Mosquitto]:
    """mosquitto that keeps sessions and queued messages across stop/start on the same port."""
    with running_mosquitto(persistent=True) as broker:
        yield broker
