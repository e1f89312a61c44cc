"""Core data path end to end: embedded amqtt (local) -> gateway -> mosquitto (cloud) -> collector.

The expected outcome is computed independently of the gateway's rule code, from the same inputs.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from pathlib import Path

from bridge.cloud.report import build_report
from bridge.cloud.sink import run_sink
from bridge.protocol.model import Reading
from tests.e2e.harness import CloudCollector, Devices, gateway_config, local_url, running_gateway, telemetry
from tests.support import Mosquitto, eventually

DEVICES = 20
PER_DEVICE = 200
RULES = [
    {"name": "temp", "metrics": "temperature", "valid": {"min": -40, "max": 85}, "alert": {"max": 30, "hysteresis": 1}},
    {"name": "hum", "metrics": "humidity", "deadband": {"abs": 1.0, "max_silence_s": 30}},
]


def temperature(d: int, i: int) -> float:
    return 999.0 if i % 37 == 0 else round(20 + 12 * math.sin((i + 7 * d) / 9), 2)


def humidity(d: int, i: int) -> float:
    return round(50 + 3 * math.sin((i + d) / 15), 1)


def expected(t0: int) -> tuple[list[Reading], int, int]:
    """Readings the rules pass, number of alert changes, and the number of invalid readings."""
    passed: list[Reading] = []
    alerts = invalid = 0
    for d in range(DEVICES):
        active = False
        last: tuple[int, float] | None = None
        for i in range(1, PER_DEVICE + 1):
            ts = t0 + i * 1000
            t = temperature(d, i)
            if t > 85:
                invalid += 1
            else:
                passed.append(Reading(f"dev-{d:02d}", "temperature", ts, t, i))
                if not active and t > 30:
                    active, alerts = True, alerts + 1
                elif active and t <= 29:
                    active, alerts = False, alerts + 1
            h = humidity(d, i)
            if last is None or abs(h - last[1]) >= 1.0 or ts - last[0] >= 30_000:
                passed.append(Reading(f"dev-{d:02d}", "humidity", ts, h, i))
                last = (ts, h)
    return passed, alerts, invalid


def stored(db: Path) -> int:
    try:
        with sqlite3.connect(db) as con:
            return int(con.execute("SELECT count(*) FROM readings").fetchone()[0])
    except sqlite3.Error:
        return 0


def messages(t0: int) -> list[tuple[str, bytes]]:
    return [
        telemetry(f"dev-{d:02d}", i, t0 + i * 1000, temperature=temperature(d, i), humidity=humidity(d, i))
        for i in range(1, PER_DEVICE + 1) for d in range(DEVICES)
    ]


async def test_rules_batches_alerts_and_accounting_end_to_end(tmp_path: Path, mosquitto: Mosquitto) -> None:
    t0 = int(time.time() * 1000) - 300_000
    want, want_alerts, want_invalid = expected(t0)
    cloud = CloudCollector(mosquitto.url)
    await cloud.connect()
    db = tmp_path / "sink.sqlite"
    sink_stop = asyncio.Event()
    sink = asyncio.create_task(run_sink(mosquitto.url, db, protocol="5", stop=sink_stop))
    await eventually(db.exists)
    async with running_gateway(gateway_config(tmp_path, mosquitto.url, rules=RULES)) as gw:
        devices = await Devices.connect(local_url(gw))
        await devices.publish_all(messages(t0))
        await devices.close()
        await eventually(lambda: len(cloud.data.readings()) >= len(want) and gw.accounting.pending == 0
                         and gw.accounting.buffered == 0 and len(cloud.data.control) >= want_alerts,
                         message=lambda: f"{len(cloud.data.readings())}/{len(want)} {gw.snapshot()}")
        acc = gw.accounting
        assert acc.readings_in == DEVICES * PER_DEVICE * 2
        assert acc.dropped == {"out_of_range": want_invalid}
        assert acc.balance() == 0
        assert acc.delivered == len(want)
        assert acc.delivered + sum(acc.filtered.values()) + sum(acc.dropped.values()) == acc.readings_in
    await cloud.close()
    await eventually(lambda: stored(db) >= len(want))
    sink_stop.set()
    await sink
    got = cloud.data.readings()
    assert sorted(got) == sorted(want)
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT device, metric, ts_ms, value, seq FROM readings").fetchall()
    assert sorted(Reading(*row) for row in rows) == sorted(want), "the sink stores exactly what the rules pass"
    report = build_report(db)["gateways"]["gw-test"]
    assert report["readings"] == len(want)
    assert report["duplicates"] == {"telemetry": 0, "control": 0}
    assert report["gaps"]["telemetry"]["missing"] == 0 and report["gaps"]["control"]["missing"] == 0
    assert report["alerts"]["raised"] + report["alerts"]["cleared"] == want_alerts
    assert len(cloud.data.batches) == len(cloud.data.unique_batches()), "duplicate batches on a clean run"
    assert sorted(cloud.data.unique_batches()) == list(range(1, len(cloud.data.unique_batches()) + 1))
    alerts = list(cloud.data.unique_control().values())
    assert len(alerts) == want_alerts == len(cloud.data.control)
    assert {a["kind"] for a in alerts} == {"alert"}
    assert cloud.data.status[0] == b"online" and cloud.data.status[-1] == b"offline"


async def test_cloud_outage_buffers_then_delivers_everything_in_order(
    tmp_path: Path, persistent_mosquitto: Mosquitto
) -> None:
    cloud_broker = persistent_mosquitto
    t0 = int(time.time() * 1000) - 60_000
    cloud = CloudCollector(cloud_broker.url)
    await cloud.connect()
    cfg = gateway_config(tmp_path, cloud_broker.url, batch={"max_count": 50, "max_age_s": 0.1})
    async with running_gateway(cfg) as gw:
        devices = await Devices.connect(local_url(gw))
        first = [telemetry(f"d{d}", i, t0 + i, v=float(i)) for i in range(1, 301) for d in range(5)]
        await devices.publish_all(first[:500])
        await eventually(lambda: gw.accounting.delivered >= 500)
        cloud_broker.stop()
        await eventually(lambda: not gw.link.connected)
        await devices.publish_all(first[500:])
        await eventually(lambda: gw.buffer.depth("telemetry") > 0 and gw.accounting.pending == 0)
        assert gw.accounting.delivered < 1500
        cloud_broker.start()
        await eventually(lambda: gw.accounting.delivered == 1500 and gw.buffer.depth("telemetry") == 0,
                         timeout=30, message=lambda: str(gw.snapshot()))
        await eventually(lambda: len(cloud.data.readings()) == 1500, message=lambda: str(len(cloud.data.readings())))
        await devices.close()
        assert gw.accounting.balance() == 0
        assert gw.link.connects >= 2
    await cloud.close()
    readings = cloud.data.readings()
    assert len(readings) == len(set(readings)) == 1500
    for d in range(5):
        seqs = [r.seq for r in readings if r.device == f"d{d}"]
        assert seqs == list(range(1, 301)), f"d{d} out of order or incomplete"
    replayed = [b for b in cloud.data.batches if b.replay]
    assert replayed, "batches sent from the backlog carry the replay flag"
