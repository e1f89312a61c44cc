"""Config push end to end: an operator client publishes on mosquitto (cloud) -> gateway applies ->
readings from real devices on the embedded amqtt broker show the new rules at the cloud."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import ClientSettings
from gateway.config import GatewayConfig, Secrets
from gateway.observe.metrics import SnapshotCollector
from gateway.observe.stats import SnapshotBoard
from gateway.service import GatewayService
from tests.e2e.harness import CloudCollector, Devices, gateway_config, local_url, running_gateway, telemetry
from tests.support import Mosquitto, eventually

CONFIG_TOPIC = "edge/gw-test/config"
FILE_RULES = [{"name": "file", "metrics": "temp", "alert": {"max": 30}}]
RULES_50 = [{"name": "pushed", "metrics": "temp", "alert": {"max": 50}}]


def config(tmp: Path, url: str) -> GatewayConfig:
    return gateway_config(tmp, url, rules=FILE_RULES)


async def push(url: str, document: dict[str, Any] | bytes, retain: bool = False) -> None:
    payload = document if isinstance(document, bytes) else json.dumps(document).encode()
    conn = await MqttConnection.open(url, ClientSettings(client_id="operator", protocol="5"))
    try:
        await conn.publish(CONFIG_TOPIC, payload, 1, retain)
    finally:
        await conn.close()


def statuses(cloud: CloudCollector) -> list[dict[str, Any]]:
    return [c for c in cloud.data.unique_control().values() if c["kind"] == "config_status"]


async def ack(cloud: CloudCollector, version: int | None, count: int = 1) -> dict[str, Any]:
    """The ``count``-th status record for ``version`` (waits for it)."""
    await eventually(lambda: len([s for s in statuses(cloud) if s["version"] == version]) >= count,
                     message=lambda: f"no status #{count} for version {version}: {statuses(cloud)}")
    return [s for s in statuses(cloud) if s["version"] == version][count - 1]


def alert_values(cloud: CloudCollector) -> list[tuple[float, str]]:
    alerts = sorted((c for c in cloud.data.unique_control().values() if c["kind"] == "alert"), key=lambda c: c["seq"])
    return [(a["value"], a["state"]) for a in alerts]


class Temps:
    """One device publishing temperatures; :meth:`send` returns once the gateway processed them."""

    def __init__(self, devices: Devices, svc: GatewayService) -> None:
        self.devices = devices
        self.svc = svc
        self.seq = 0

    async def send(self, *values: float) -> None:
        want = self.svc.accounting.readings_in + len(values)
        for v in values:
            self.seq += 1
            await self.devices.publish_all([telemetry("dev-1", self.seq, int(time.time() * 1000), temp=v)])
        await eventually(lambda: self.svc.accounting.readings_in >= want)


Stack = tuple[GatewayService, CloudCollector, Temps]


@asynccontextmanager
async def stack(cfg: GatewayConfig, mosquitto: Mosquitto) -> AsyncIterator[Stack]:
    cloud = CloudCollector(mosquitto.url)
    await cloud.connect()
    async with running_gateway(cfg) as svc:
        await eventually(lambda: svc.link.connected)
        devices = await Devices.connect(local_url(svc))
        try:
            yield svc, cloud, Temps(devices, svc)
        finally:
            await devices.close()
    await cloud.close()


async def settled(svc: GatewayService, readings: int) -> None:
    acc = svc.accounting
    await eventually(lambda: acc.readings_in == readings and acc.pending == 0 and acc.buffered == 0
                     and svc.buffer.depth("control") == 0,
                     message=lambda: f"not settled: {acc.snapshot()}")
    assert acc.balance() == 0


async def test_valid_push_is_applied_and_changes_which_readings_alert(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with stack(config(tmp_path, mosquitto.url), mosquitto) as (svc, cloud, temps):
        await temps.send(40, 20)  # file rule: max 30
        await eventually(lambda: len(alert_values(cloud)) == 2)
        await push(mosquitto.url, {"version": 1, "rules": RULES_50})
        status = await ack(cloud, 1)
        assert status == {**status, "status": "applied", "errors": [], "current_version": 1, "gw": "gw-test"}
        await temps.send(40, 55, 20)
        await eventually(lambda: len(alert_values(cloud)) == 4)
        await settled(svc, 5)
        assert alert_values(cloud) == [(40, "raised"), (20, "cleared"), (55, "raised"), (20, "cleared")]
        snap = svc.snapshot()
        assert snap["config_version"] == 1 and snap["config_push"]["applied"] == 1
        board = SnapshotBoard()
        board.refresh(svc.typed_snapshot)
        metrics = {m.name: m for m in SnapshotCollector(board.latest).collect()}
        assert metrics["edge_config_version"].samples[0].value == 1
        assert {s.labels["status"]: s.value for s in metrics["edge_config_pushes"].samples
                if s.name.endswith("_total")} == {"applied": 1, "rejected": 0, "stale": 0}


async def test_readings_in_flight_around_an_apply_are_all_delivered(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = gateway_config(tmp_path, mosquitto.url, batch={"max_count": 500, "max_age_s": 30.0})
    t0 = int(time.time() * 1000) - 60_000
    sent = [(f"dev-{d}", i) for i in range(1, 301) for d in range(10)]
    async with stack(cfg, mosquitto) as (svc, cloud, temps):
        publishing = asyncio.create_task(temps.devices.publish_all(
            telemetry(dev, i, t0 + i, hum=float(i)) for dev, i in sent))
        await eventually(lambda: len(svc.batcher) > 0)  # an open batch is waiting when the push lands
        await push(mosquitto.url, {"version": 1, "batch": {"max_count": 7, "max_age_s": 0.1, "compression": "none"}})
        await publishing
        assert (await ack(cloud, 1))["status"] == "applied"
        await settled(svc, len(sent))
        await eventually(lambda: len(cloud.data.readings()) == len(sent))
        assert sorted((r.device, r.seq) for r in cloud.data.readings()) == sorted(sent)
        assert svc.batcher.max_count == 7 and svc.lanes.compression == "none"
        assert min(len(b.readings) for b in cloud.data.unique_batches().values()) <= 7


async def test_invalid_push_is_rejected_and_the_old_config_keeps_working(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with stack(config(tmp_path, mosquitto.url), mosquitto) as (svc, cloud, temps):
        await push(mosquitto.url, {"version": 1, "rules": RULES_50})
        assert (await ack(cloud, 1))["status"] == "applied"
        await push(mosquitto.url, {"version": 2, "rules": [{"metrics": "temp", "alert": {"min": 60, "max": 10}}],
                                   "batch": {"max_count": 0}, "sampling": {}})
        status = await ack(cloud, 2)
        assert status["status"] == "rejected" and status["current_version"] == 1
        assert {e["key"] for e in status["errors"]} == {"rules[0].alert", "batch.max_count", "sampling"}
        await push(mosquitto.url, b"{broken")
        status = await ack(cloud, None)
        assert status["status"] == "rejected" and status["errors"][0]["key"] == "(syntax)"
        await temps.send(40, 55)
        await eventually(lambda: len(alert_values(cloud)) == 1)
        await settled(svc, 2)
        assert alert_values(cloud) == [(55, "raised")]
        assert svc.snapshot()["config_version"] == 1 and svc.snapshot()["config_push"]["rejected"] == 2


async def test_stale_version_is_ignored(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with stack(config(tmp_path, mosquitto.url), mosquitto) as (svc, cloud, temps):
        await push(mosquitto.url, {"version": 2, "rules": RULES_50})
        assert (await ack(cloud, 2))["status"] == "applied"
        await push(mosquitto.url, {"version": 2, "rules": []})
        await push(mosquitto.url, {"version": 1, "rules": []})
        assert (await ack(cloud, 2, count=2))["status"] == "stale"
        stale = await ack(cloud, 1)
        assert (stale["status"], stale["current_version"]) == ("stale", 2)
        await temps.send(40, 55)
        await eventually(lambda: len(alert_values(cloud)) == 1)
        assert alert_values(cloud) == [(55, "raised")]
        assert svc.snapshot()["config_push"] == {"applied": 1, "rejected": 0, "stale": 2, "load_errors": 0,
                                                 "cleared": 0}


async def test_pushed_config_survives_a_restart(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = config(tmp_path, mosquitto.url)
    async with stack(cfg, mosquitto) as (svc, cloud, _):
        await push(mosquitto.url, {"version": 3, "rules": RULES_50})  # not retained: only the file keeps it
        assert (await ack(cloud, 3))["status"] == "applied"
    async with stack(cfg, mosquitto) as (svc, cloud, temps):
        assert svc.snapshot()["config_version"] == 3
        await temps.send(40, 55)
        await eventually(lambda: len(alert_values(cloud)) == 1)
        assert alert_values(cloud) == [(55, "raised")]


async def test_retained_push_reaches_a_gateway_that_connects_later(tmp_path: Path, mosquitto: Mosquitto) -> None:
    await push(mosquitto.url, {"version": 4, "rules": RULES_50}, retain=True)
    async with stack(config(tmp_path, mosquitto.url), mosquitto) as (svc, cloud, temps):
        assert (await ack(cloud, 4))["status"] == "applied"
        await temps.send(40, 55)
        await eventually(lambda: len(alert_values(cloud)) == 1)
        assert alert_values(cloud) == [(55, "raised")]
    # restarted, it gets the retained document again: already in force, so answered stale
    async with stack(config(tmp_path, mosquitto.url), mosquitto) as (svc, cloud, _):
        assert svc.snapshot()["config_version"] == 4
        assert (await ack(cloud, 4))["status"] == "stale"


async def test_corrupt_persisted_file_starts_on_the_file_config(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = config(tmp_path, mosquitto.url)
    cfg.pushed_config_file.parent.mkdir(parents=True)
    cfg.pushed_config_file.write_text('{"version": 9, "rules": [')  # torn
    async with stack(cfg, mosquitto) as (svc, cloud, temps):
        assert svc.snapshot()["config_version"] == 0 and svc.snapshot()["config_push"]["load_errors"] == 1
        assert cfg.pushed_config_file.with_name("pushed-config.json.bad").exists()
        await temps.send(40)
        await eventually(lambda: alert_values(cloud) == [(40, "raised")])
        await push(mosquitto.url, {"version": 1, "rules": RULES_50})
        assert (await ack(cloud, 1))["status"] == "applied"


def test_config_push_off_does_not_subscribe(tmp_path: Path) -> None:
    cfg = gateway_config(tmp_path, "mqtt://127.0.0.1:1", downlink={"config_push": False})
    svc = GatewayService(cfg, Secrets())
    assert ("edge/gw-test/config", 1) not in svc.downlink.subscriptions()
