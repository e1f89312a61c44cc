"""A gateway whose clock is not synced yet keeps correctly stamped device data and says so."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

from gateway.observe.metrics import SnapshotCollector
from gateway.process.clock import date_ms
from tests.e2e.harness import CloudCollector, Devices, gateway_config, local_url, running_gateway, telemetry
from tests.support import Mosquitto, eventually

FLOOR = dt.date(2100, 1, 1)  # the test machine's real clock reads before it: "not synced yet"
DEVICE_TS = date_ms(FLOOR) + 3_600_000  # a device that knows the real time (from the gateway's view)


async def test_unsynced_gateway_clock_keeps_device_timestamps_and_counts_receive_stamps(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    cloud = CloudCollector(mosquitto.url)
    await cloud.connect()
    cfg = gateway_config(tmp_path, mosquitto.url, clock={"floor_date": FLOOR})
    async with running_gateway(cfg) as gw:
        assert gw.snapshot()["clock"]["synced"] is False
        devices = await Devices.connect(local_url(gw))
        before_ms = int(time.time() * 1000)
        await devices.publish_all([telemetry("dev-1", 1, DEVICE_TS, t=21.5),
                                   ("devices/dev-1/telemetry", json.dumps({"h": 40}).encode())])
        await devices.close()
        await eventually(lambda: len(cloud.data.readings()) == 2, timeout=30,
                         message=lambda: f"{cloud.data.readings()} {gw.snapshot()['accounting']}")
        clock = gw.snapshot()["clock"]
        assert clock["window_not_judged"] == 1 and clock["receive_stamped_unsynced"] == 1
        families = {f.name: f for f in SnapshotCollector(lambda: (time.time(), gw.typed_snapshot())).collect()}
        assert families["edge_clock_synced"].samples[0].value == 0
        assert families["edge_clock_window_not_judged_readings"].samples[0].value == 1
        assert families["edge_clock_receive_stamped_unsynced_readings"].samples[0].value == 1
        assert not any(gw.snapshot()["accounting"]["dropped"].values())
    await cloud.close()
    by_metric = {r.metric: r for r in cloud.data.readings()}
    assert by_metric["t"].ts_ms == DEVICE_TS
    assert before_ms <= by_metric["h"].ts_ms <= int(time.time() * 1000)
