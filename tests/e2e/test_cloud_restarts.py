"""The cloud broker (mosquitto) killed with SIGKILL and restarted again and again while devices
publish through the gateway. At the cloud side the project's sink (SQLite, dedup by
``(gateway, lane, seq)``) must end up with every reading the devices got a PUBACK for, each once,
every device in order, and the gateway's accounting identity must be exact.

The kills are placed by a seeded RNG at random points of the data stream rather than at random
wall-clock times: the broker dies once a random number of readings has been delivered since it
last came up (so some kills land in the middle of a backlog drain), and stays down until a random
number of readings has piled up on the gateway's disk. That keeps the test independent of the
machine's speed and never waits on a fixed sleep.

The broker saves its state after every change (``autosave_on_changes``): the sink's persistent
session and the messages queued for it must survive a SIGKILL of the broker, or messages the
broker had already acknowledged to the gateway would be lost inside the broker, which is not what
this test is about.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.cloud.report import build_report
from bridge.cloud.sink import Sink
from bridge.cloud.sink_store import SinkStore
from bridge.mqtt.backoff import DecorrelatedJitter
from tests.e2e.harness import PacedDevices, gateway_config, local_url, running_gateway
from tests.support import Mosquitto, eventually

SEED = 20240611


@pytest.fixture
def durable_cloud() -> Iterator[Mosquitto]:
    """mosquitto that writes its persistence file after every change, so a SIGKILL loses no
    acknowledged message and no session."""
    broker = Mosquitto(persistent=True, extra_conf="autosave_on_changes true\n")
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


@dataclass
class Outcome:
    kills: int
    readings: int
    batches: int
    duplicates_dropped: int
    gateway_connects: int


async def reach(value: Callable[[], int], target: int, what: str) -> None:
    await eventually(lambda: value() >= target, timeout=30, message=lambda: f"{what}: {value()} < {target}")


async def kill_and_restart(cloud: Mosquitto, delivered: Callable[[], int], backlog: Callable[[], int],
                           rng: random.Random, kills: int) -> None:
    """``kills`` times: wait for a random amount of delivered readings, SIGKILL the broker, wait for
    a random backlog on disk, start it again on the same port."""
    for k in range(kills):
        target = delivered() + rng.randint(20, 400)
        await reach(delivered, target, f"kill {k}: readings delivered since the broker came up")
        await asyncio.to_thread(cloud.kill)
        want = rng.randint(20, 300)
        await reach(backlog, want, f"kill {k}: backlog while the broker is down")
        await asyncio.to_thread(cloud.start)


def sink_rows(db: Path) -> tuple[list[tuple[str, int, int]], list[int]]:
    """Readings as (device, device seq, batch seq) in batch order, and the telemetry batch seqs."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT device, seq, batch_seq FROM readings WHERE gateway = 'gw-test' "
                           "ORDER BY batch_seq, rowid").fetchall()
        seqs = [s for (s,) in con.execute("SELECT seq FROM batches WHERE gateway = 'gw-test' "
                                          "AND lane = 'telemetry' ORDER BY seq")]
    return rows, seqs


async def run_restarts(tmp: Path, cloud: Mosquitto, *, devices: int, rate_hz: float, kills: int,
                       seed: int) -> Outcome:
    rng = random.Random(seed)
    db = tmp / "sink.sqlite"
    store = SinkStore(db)
    sink = Sink(store, [cloud.url], backoff=DecorrelatedJitter(0.05, 0.3), connect_timeout_s=2.0)
    sink_stop = asyncio.Event()
    sink_task = asyncio.create_task(sink.run(sink_stop))
    try:
        await asyncio.wait_for(sink.ready.wait(), 10)
        cfg = gateway_config(tmp, cloud.url, batch={"max_count": 100, "max_age_s": 0.1})
        async with running_gateway(cfg) as gw:
            acc = gw.accounting
            pub = PacedDevices(local_url(gw), devices, rate_hz)
            pub.start()
            await kill_and_restart(cloud, lambda: acc.delivered, lambda: gw.buffer.readings("telemetry"),
                                   rng, kills)
            target = acc.delivered + 100  # a little more live traffic after the last restart
            await eventually(lambda: acc.delivered >= target, timeout=30)
            await pub.stop()
            total = pub.acked_total
            assert pub.unacked == 0 and total == pub.published_total, "the local broker never went away"
            await eventually(lambda: acc.delivered == total and acc.buffered == 0 and acc.pending == 0,
                             timeout=30, message=lambda: f"{total} published, gateway: {gw.snapshot()}")
            await eventually(lambda: sink.counters.readings == total, timeout=30,
                             message=lambda: f"sink has {sink.counters.readings} of {total}")
            # The accounting identity, exactly: nothing filtered, dropped, restored or left over.
            assert acc.readings_in == total
            assert acc.restored == 0
            assert dict(acc.filtered) == {} and dict(acc.dropped) == {}
            assert acc.balance() == 0
            assert acc.delivered + sum(acc.filtered.values()) + sum(acc.dropped.values()) == acc.readings_in
            batches_delivered, connects = acc.batches_delivered, gw.link.connects
    finally:
        sink_stop.set()
        await asyncio.wait_for(sink_task, 10)
        store.close()

    rows, batch_seqs = sink_rows(db)
    # Zero loss and zero duplicates after dedup: every acknowledged reading exactly once.
    assert len(rows) == total
    per_device: dict[str, list[int]] = {}
    for device, seq, _batch in rows:
        per_device.setdefault(device, []).append(seq)
    for device, acked in pub.acked.items():
        # In gateway batch order, each device's seqs are strictly increasing and complete.
        assert per_device.get(device) == sorted(acked) == list(range(1, pub.published[device] + 1)), device
    # Every batch the gateway counted as delivered is in the ledger once; the seqs have no holes.
    assert batch_seqs == list(range(1, len(batch_seqs) + 1))
    assert len(batch_seqs) == batches_delivered
    report = build_report(db)["gateways"]["gw-test"]
    assert report["readings"] == total
    assert report["gaps"]["telemetry"]["missing"] == 0
    assert report["duplicates"]["telemetry"] == sink.counters.duplicates  # resends after a lost PUBACK
    assert connects == kills + 1, "the gateway reconnected after every restart"
    return Outcome(kills, total, len(batch_seqs), sink.counters.duplicates, connects)


@pytest.mark.timeout(60)
async def test_cloud_broker_killed_repeatedly_loses_and_duplicates_nothing(
    tmp_path: Path, durable_cloud: Mosquitto
) -> None:
    out = await run_restarts(tmp_path, durable_cloud, devices=8, rate_hz=25, kills=4, seed=SEED)
    print(out)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_cloud_broker_killed_many_times_with_many_devices(tmp_path: Path, durable_cloud: Mosquitto) -> None:
    out = await run_restarts(tmp_path, durable_cloud, devices=50, rate_hz=10, kills=25, seed=SEED + 1)
    print(out)
