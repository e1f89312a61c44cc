"""The gateway as a real process: SIGTERM with a non-empty buffer flushes and exits 0; after a
restart everything drains and batch sequence numbers continue without reuse."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.store.buffer import Budget, DiskBuffer
from tests.e2e.gateway_process import GatewayProcess, scrape, write_config
from tests.e2e.harness import CloudCollector, Devices, telemetry
from tests.support import Mosquitto, eventually, free_port


async def test_sigterm_flushes_and_restart_drains_without_seq_reuse(tmp_path: Path, mosquitto: Mosquitto) -> None:
    mosquitto.stop()  # cloud down: everything stays in the buffer
    local_port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, local_port, metrics_port, mosquitto.url, max_count=100, max_age_s=30.0)
    t0 = int(time.time() * 1000) - 10_000

    gw = GatewayProcess(config, local_port, metrics_port)
    await gw.ready()
    devices = await Devices.connect(f"mqtt://127.0.0.1:{local_port}")
    await devices.publish_all(telemetry(f"d{d}", i, t0 + i, v=float(i)) for i in range(1, 251) for d in range(2))
    await devices.close()
    await eventually(lambda: scrape(metrics_port, "edge_readings_received") == 500)
    assert gw.terminate() == 0
    # 500 readings, batches of 100 closed by count; SIGTERM flushed nothing left open (500 = 5 x 100)
    buf = DiskBuffer(tmp_path / "data" / "buffer", {"telemetry": Budget(10**9), "control": Budget(10**9)})
    buf.open()
    assert buf.readings("telemetry") == 500 and buf.depth("telemetry") == 5
    buf.close()

    mosquitto.start()
    cloud = CloudCollector(mosquitto.url)
    await cloud.connect()
    gw = GatewayProcess(config, local_port, metrics_port)
    await gw.ready()
    await eventually(lambda: len(cloud.data.readings()) == 500, timeout=30)
    assert scrape(metrics_port, "edge_readings_restored") == 500  # accounted on the input side after restart
    # the PUBACK may trail the collector
    await eventually(lambda: scrape(metrics_port, "edge_readings_delivered") == 500)
    devices = await Devices.connect(f"mqtt://127.0.0.1:{local_port}")
    await devices.publish_all(telemetry("d9", i, t0 + i, v=1.5) for i in range(1, 31))
    await devices.close()
    await eventually(lambda: scrape(metrics_port, "edge_readings_received") == 30,
                     message=lambda: f"readings_in={scrape(metrics_port, 'edge_readings_received')}")
    assert gw.terminate() == 0  # the open batch of 30 is flushed on SIGTERM and sent before exit
    await eventually(lambda: len(cloud.data.readings()) == 530)
    await cloud.close()
    seqs = [b.seq for b in cloud.data.batches]
    assert sorted(set(seqs)) == list(range(1, 7)), seqs  # 5 from before the restart, then 6: no reuse
    assert all(b.replay for b in cloud.data.batches if b.seq <= 5)
    assert not next(b for b in cloud.data.batches if b.seq == 6).replay
