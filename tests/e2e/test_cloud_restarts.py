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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.exactly_once import assert_stored_exactly_once, running_sink, stop_and_settle
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


async def run_restarts(tmp: Path, cloud: Mosquitto, *, devices: int, rate_hz: float, kills: int,
                       seed: int) -> Outcome:
    rng = random.Random(seed)
    db = tmp / "sink.sqlite"
    async with running_sink(db, [cloud.url]) as sink:
        cfg = gateway_config(tmp, cloud.url, batch={"max_count": 100, "max_age_s": 0.1})
        async with running_gateway(cfg) as gw:
            acc = gw.accounting
            pub = PacedDevices(local_url(gw), devices, rate_hz)
            pub.start()
            await kill_and_restart(cloud, lambda: acc.delivered, lambda: gw.buffer.readings("telemetry"),
                                   rng, kills)
            target = acc.delivered + 100  # a little more live traffic after the last restart
            await eventually(lambda: acc.delivered >= target, timeout=30)
            total = await stop_and_settle(gw, pub, lambda: sink.counters.readings)
            batches_delivered, connects = gw.accounting.batches_delivered, gw.link.connects
    batches = assert_stored_exactly_once(db, pub, batches_delivered, sink.counters.duplicates)
    assert connects == kills + 1, "the gateway reconnected after every restart"
    return Outcome(kills, total, batches, sink.counters.duplicates, connects)


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
