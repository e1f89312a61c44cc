"""Outage batching (``batch.outage_max_age_s`` / ``outage_max_count``): while the uplink is down
the open batch may grow past the live limits; when the link is back it is closed at once, and the
live limits apply again. Nothing is lost or sent twice, and the accounting balances throughout."""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.harness import CloudCollector, Devices, device_seq, gateway_config, local_url, running_gateway, telemetry
from tests.support import Mosquitto, eventually


async def test_an_outage_makes_one_large_batch_and_the_live_limits_return_with_the_link(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = gateway_config(tmp_path, mosquitto.url, batch={"max_count": 10, "max_age_s": 0.1,
                                                         "outage_max_age_s": 600, "outage_max_count": 1000})
    mosquitto.stop()  # down from the start: the gateway has never been connected
    t0 = int(time.time() * 1000) - 60_000
    async with running_gateway(cfg) as gw:
        devices = await Devices.connect(local_url(gw))
        await devices.publish_all([telemetry("dev-1", i, t0 + i * 100, t=20.0) for i in range(1, 201)])
        acc = gw.accounting
        await eventually(lambda: acc.readings_in == 200)
        # the live limits (10 readings, 0.1 s) would have closed 20 batches by now; the outage ones hold
        assert acc.pending == 200 and gw.buffer.depth("telemetry") == 0
        assert acc.balance() == 0
        mosquitto.start()  # the link comes back: the open batch is over the live limits and closes
        cloud = CloudCollector(mosquitto.url)
        await cloud.connect()
        try:
            await eventually(lambda: acc.delivered == 200, timeout=30)
            await devices.publish_all([telemetry("dev-1", i, t0 + i * 100, t=20.0) for i in range(201, 231)])
            await eventually(lambda: acc.delivered == 230, timeout=30)
            await eventually(lambda: sum(len(b.readings) for b in cloud.data.unique_batches().values()) == 230)
        finally:
            await devices.close()
            await cloud.close()
        assert acc.balance() == 0 and not acc.dropped
    sizes = [len(b.readings) for b in sorted(cloud.data.unique_batches().values(), key=lambda b: b.seq)]
    assert sizes[0] == 200, sizes  # the whole outage in one record
    assert all(size <= 10 for size in sizes[1:]) and sum(sizes[1:]) == 30, sizes  # live limits again
    assert [device_seq(r) for r in cloud.data.readings()] == list(range(1, 231))
