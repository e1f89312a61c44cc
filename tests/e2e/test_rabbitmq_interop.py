"""Interop with RabbitMQ 3.10 (Debian's ``rabbitmq-server``, ``rabbitmq_mqtt`` plugin, MQTT 3.1.1) as
the cloud broker: a real gateway publishes through it to the sink, the sink is stopped and started
again mid-stream (same database, so the same client id), and its persistent session (a durable
queue in RabbitMQ) hands it everything published meanwhile. End state: every reading the devices
got a PUBACK for stored exactly once, the ledger without holes, the gateway's accounting exact.

The node takes ~15 s to start, so one node serves the module."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.cloud.sink import Sink
from bridge.cloud.sink_store import SinkStore
from bridge.mqtt.backoff import DecorrelatedJitter
from tests.e2e.exactly_once import assert_stored_exactly_once, stop_and_settle
from tests.e2e.harness import PacedDevices, gateway_config, local_url, running_gateway
from tests.rabbitmq_broker import RabbitMQ, running_rabbitmq
from tests.support import eventually

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def rabbitmq() -> Iterator[RabbitMQ]:
    with running_rabbitmq() as broker:
        yield broker


class SinkRun:
    """The sink on the event loop, started and stopped (cleanly, with DISCONNECT) by the test."""

    def __init__(self, url: str, store: SinkStore) -> None:
        self.sink = Sink(store, [url], protocol="3.1.1", backoff=DecorrelatedJitter(0.05, 0.3),
                         connect_timeout_s=5.0)
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.sink.run(self._stop))

    async def ready(self) -> Sink:
        await asyncio.wait_for(self.sink.ready.wait(), 20)
        return self.sink

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(self._task, 10)


async def test_gateway_to_rabbitmq_to_sink_exactly_once_across_a_sink_restart(
    tmp_path: Path, rabbitmq: RabbitMQ
) -> None:
    db = tmp_path / "sink.sqlite"
    with SinkStore(db) as store:
        run = SinkRun(rabbitmq.url, store)
        first = await run.ready()
        try:
            cfg = gateway_config(tmp_path, rabbitmq.url, protocol="3.1.1",
                                 batch={"max_count": 100, "max_age_s": 0.1})
            async with running_gateway(cfg) as gw:
                acc = gw.accounting
                pub = PacedDevices(local_url(gw), 8, 25)
                pub.start()
                await eventually(lambda: first.counters.readings >= 200, timeout=30)
                await run.stop()
                # the gateway keeps delivering, into the stopped sink's session
                target = acc.delivered + 300
                await eventually(lambda: acc.delivered >= target, timeout=30)
                run = SinkRun(rabbitmq.url, store)  # same database: same client id, the session resumes
                second = await run.ready()
                total = await stop_and_settle(gw, pub, lambda: first.counters.readings + second.counters.readings)
                batches_delivered = acc.batches_delivered
        finally:
            await run.stop()
    assert second.counters.readings >= 300, "what was published while the sink was away reached it"
    print(f"{total} readings, {first.counters.readings} before the sink restart, {second.counters.readings} after")
    assert first.settings.client_id == second.settings.client_id
    duplicates = first.counters.duplicates + second.counters.duplicates
    assert_stored_exactly_once(db, pub, batches_delivered, duplicates)
