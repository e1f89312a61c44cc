"""`local_broker.mode = "external"`: the gateway ingests from a mosquitto already on the box,
as a client with a persistent session, and forwards as usual; overflow of its bounded ingest
queue is counted, never silent."""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.harness import Devices, gateway_config, running_gateway, telemetry
from tests.support import Mosquitto, eventually


async def test_ingest_from_external_mosquitto(tmp_path: Path, mosquitto: Mosquitto, amqtt_broker: object) -> None:
    from gateway.source.broker import EmbeddedBroker

    assert isinstance(amqtt_broker, EmbeddedBroker)
    cloud_url = f"mqtt://127.0.0.1:{amqtt_broker.address.port}"  # amqtt as the cloud side (MQTT 3.1.1)
    cfg = gateway_config(tmp_path, cloud_url, protocol="3.1.1",
                         local_broker={"mode": "external", "url": mosquitto.url})
    t0 = int(time.time() * 1000)
    async with running_gateway(cfg) as gw:
        assert gw.external is not None
        await eventually(lambda: gw.external is not None and gw.external.connection is not None)
        devices = await Devices.connect(mosquitto.url)
        await devices.publish_all(telemetry(f"d{i % 3}", i, t0 + i, v=float(i)) for i in range(1, 301))
        await devices.publish_all([("devices/bad id/telemetry", b'{"v": 1}')])
        await devices.close()
        await eventually(lambda: gw.accounting.delivered == 300 and gw.accounting.pending == 0
                         and gw.accounting.readings_in == 301, message=lambda: str(gw.snapshot()))
        assert gw.accounting.dropped == {"bad_device_id": 1}
        assert gw.accounting.balance() == 0
        assert gw.link.connected and gw.link.active_url == cloud_url


async def test_ingest_overflow_is_counted(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = gateway_config(tmp_path, mosquitto.url, local_broker={"ingest_queue_max": 5})
    t0 = int(time.time() * 1000)
    async with running_gateway(cfg) as gw:
        # Hold the processor back by filling the queue from inside the loop in one go.
        for i in range(20):
            gw.ingest.offer("devices/d1/telemetry", telemetry("d1", i + 1, t0 + i, v=1.0)[1])
        assert gw.accounting.dropped["ingest_overflow"] == 15
        assert gw.rejects.counts["ingest_overflow"] == 15
        await eventually(lambda: gw.accounting.delivered == 5)
        assert gw.accounting.readings_in == 20 and gw.accounting.balance() == 0


async def test_messages_published_while_gateway_is_down_are_kept_by_the_broker(
    tmp_path: Path, mosquitto: Mosquitto, amqtt_broker: object
) -> None:
    from gateway.source.broker import EmbeddedBroker

    assert isinstance(amqtt_broker, EmbeddedBroker)
    cloud_url = f"mqtt://127.0.0.1:{amqtt_broker.address.port}"
    cfg = gateway_config(tmp_path, cloud_url, protocol="3.1.1",
                         local_broker={"mode": "external", "url": mosquitto.url})
    t0 = int(time.time() * 1000)
    async with running_gateway(cfg) as gw:  # first start creates the persistent subscription
        await eventually(lambda: gw.external is not None and gw.external.connection is not None)
    devices = await Devices.connect(mosquitto.url)
    await devices.publish_all(telemetry("d1", i, t0 + i, v=float(i)) for i in range(1, 51))
    await devices.close()
    async with running_gateway(cfg) as gw:
        await eventually(lambda: gw.accounting.delivered == 50, message=lambda: str(gw.snapshot()))
