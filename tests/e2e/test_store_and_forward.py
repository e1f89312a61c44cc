"""Store and forward under load and faults: paced drain of a large backlog beside live traffic,
the telemetry budget during an outage, and failover between cloud endpoints."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import (
    CloudCollector,
    Devices,
    PacedDevices,
    device_seq,
    gateway_config,
    local_url,
    running_gateway,
    telemetry,
)
from tests.e2e.store_helpers import prefill_backlog
from tests.support import Mosquitto, eventually, running_mosquitto


async def test_a_100k_backlog_drains_interleaved_with_live_data(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = gateway_config(tmp_path, mosquitto.url, batch={"max_count": 1000, "max_age_s": 0.2})
    restored, size = prefill_backlog(cfg, batches=100, per_batch=1000)
    assert restored == 100_000
    # On loopback 100k readings drain in about a second, before the first live batch closes; a
    # byte-rate cap (the metered-link setting) stretches the drain to ~4 s so interleaving shows.
    cfg = gateway_config(tmp_path, mosquitto.url, batch={"max_count": 1000, "max_age_s": 0.2},
                         uplink={"backlog_per_live": 4, "max_bytes_per_s": size / 4})
    arrivals: list[tuple[float, bool, int]] = []  # (time, replay, readings) in arrival order
    cloud = CloudCollector(mosquitto.url,
                           on_batch=lambda b: arrivals.append((time.monotonic(), b.replay, len(b.readings))))
    await cloud.connect()
    try:
        async with running_gateway(cfg) as gw:
            devices = PacedDevices(local_url(gw), devices=10, rate_hz=20)
            devices.start()
            await eventually(lambda: gw.buffer.depth("telemetry") == 0 and devices.acked_total > 200, timeout=60)
            await devices.stop()
            await eventually(lambda: gw.accounting.delivered == restored + devices.acked_total, timeout=20)
            acc = gw.accounting
            assert acc.restored == restored and acc.readings_in == devices.acked_total
            assert acc.balance() == 0
            drain = gw.snapshot()["uplink"]["drain"]
            assert drain["backlog_readings"] == 0 and drain["eta_s"] is None
    finally:
        await cloud.close()
    replayed = [a for a in arrivals if a[1]]
    live = [a for a in arrivals if not a[1]]
    assert sum(a[2] for a in replayed) == restored  # every backlog batch, flagged replay, once
    # live batches went out while the backlog was still draining, not after it
    last_replay = replayed[-1][0]
    assert sum(1 for t, _, _ in live if t < last_replay) >= 3, "live data waited for the backlog"
    # sent in sequence order within the backlog: each old device's readings arrive in seq order
    seen: dict[str, int] = {}
    for b in cloud.data.batches:
        if b.replay:
            for r in b.readings:
                assert device_seq(r) > seen.get(r.device, 0)
                seen[r.device] = device_seq(r)


async def test_the_budget_during_an_outage_drops_oldest_telemetry_and_keeps_every_alert(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    rules = [{"name": "hot", "metrics": "t", "alert": {"max": 50}}]
    cfg = gateway_config(tmp_path, mosquitto.url, rules=rules, batch={"max_count": 50, "max_age_s": 0.1},
                         buffer={"telemetry": {"max_bytes": 6000}})
    mosquitto.stop()  # the outage
    per_device, devices_n = 300, 4
    async with running_gateway(cfg) as gw:
        devices = await Devices.connect(local_url(gw))
        t0 = int(time.time() * 1000) - 600_000
        # every 25th reading is hot, every 25th + 1 cools again: 2 alert changes per 25 readings
        msgs = [telemetry(f"dev-{d}", i, t0 + i * 1000, t=99.0 if i % 25 == 0 else 20.0)
                for i in range(1, per_device + 1) for d in range(devices_n)]
        await devices.publish_all(msgs)
        await devices.close()
        total = per_device * devices_n
        await eventually(lambda: gw.accounting.readings_in == total and gw.accounting.pending == 0)
        acc = gw.accounting
        assert acc.dropped["overflow"] > 0, "the budget was never reached"
        assert gw.buffer.bytes_used("telemetry") <= 6000
        assert acc.balance() == 0
        alerts = acc.alerts
        assert alerts == devices_n * 2 * (per_device // 25) - devices_n  # the last reading of each device is hot
        mosquitto.start()  # the cloud comes back
        cloud = CloudCollector(mosquitto.url)
        await cloud.connect()
        try:
            await eventually(lambda: gw.buffer.depth("telemetry") == 0 and gw.buffer.depth("control") == 0, timeout=30)
            await eventually(lambda: len(cloud.data.unique_control()) == alerts, timeout=20)
            readings = cloud.data.readings()
        finally:
            await cloud.close()
        assert acc.delivered == len(readings) == total - acc.dropped["overflow"]
        assert acc.control_delivered == alerts and not acc.control_dropped
        # the oldest were dropped: per device, what arrived is the tail, without holes
        for d in range(devices_n):
            seqs = sorted(device_seq(r) for r in readings if r.device == f"dev-{d}")
            assert seqs == list(range(seqs[0], per_device + 1))
        assert acc.balance() == 0


@pytest.fixture
def secondary() -> Iterator[Mosquitto]:
    with running_mosquitto() as broker:
        yield broker


async def test_failover_moves_traffic_to_the_next_endpoint_without_loss(
        tmp_path: Path, mosquitto: Mosquitto, secondary: Mosquitto) -> None:
    cfg = gateway_config(tmp_path, mosquitto.url, uplink={"urls": [mosquitto.url, secondary.url]})
    primary_cloud, secondary_cloud = CloudCollector(mosquitto.url), CloudCollector(secondary.url)
    await primary_cloud.connect()
    await secondary_cloud.connect()
    try:
        async with running_gateway(cfg) as gw:
            assert gw.snapshot()["uplink"]["endpoint"] in (None, mosquitto.url)
            devices = PacedDevices(local_url(gw), devices=5, rate_hz=20)
            devices.start()
            await eventually(lambda: len(primary_cloud.data.batches) >= 3)
            mosquitto.kill()  # the primary dies for good
            await eventually(lambda: gw.snapshot()["uplink"]["endpoint"] == secondary.url, timeout=20)
            await eventually(lambda: len(secondary_cloud.data.batches) >= 3)
            await devices.stop()
            await eventually(lambda: gw.accounting.delivered == devices.acked_total, timeout=20)
            assert gw.accounting.balance() == 0
    finally:
        await primary_cloud.close()
        await secondary_cloud.close()
    got: dict[str, set[int]] = {}
    for cloud in (primary_cloud, secondary_cloud):
        for r in cloud.data.readings():
            got.setdefault(r.device, set()).add(device_seq(r))
    for device, acked in devices.acked.items():
        assert set(acked) <= got.get(device, set()), f"{device} lost readings in the failover"
