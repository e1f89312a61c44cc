"""SIGTERM while records are in flight (sent, no PUBACK yet): the gateway process stops quietly (no
ERROR or traceback in its log), the records stay on disk and are counted, and the next start
sends them."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.store.buffer import Budget, DiskBuffer
from tests.chaos import ChaosProxy
from tests.e2e.gateway_process import GatewayProcess, scrape, write_config
from tests.e2e.harness import CloudCollector, Devices, telemetry
from tests.support import Mosquitto, eventually, free_port


async def test_sigterm_with_records_in_flight_is_quiet_and_loses_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with ChaosProxy("127.0.0.1", mosquitto.port) as proxy:
        local_port, metrics_port = free_port(), free_port()
        config = write_config(tmp_path, local_port, metrics_port, f"mqtt://127.0.0.1:{proxy.port}",
                              max_count=20, max_age_s=30.0, log_level="info")
        gw = GatewayProcess(config, local_port, metrics_port)
        await gw.ready()
        await eventually(lambda: scrape(metrics_port, "edge_uplink_connected") == 1)
        proxy.stall()  # the broker's PUBACKs never come back: what is sent stays in flight
        t0 = int(time.time() * 1000) - 10_000
        devices = await Devices.connect(f"mqtt://127.0.0.1:{local_port}")
        await devices.publish_all(telemetry(f"d{d}", i, t0 + i, v=float(i)) for i in range(1, 101) for d in range(2))
        await devices.close()
        await eventually(lambda: scrape(metrics_port, 'edge_records_written_total{lane="telemetry"}') == 10)
        await eventually(lambda: (scrape(metrics_port, "edge_uplink_connects") or 0) >= 1)
        assert gw.terminate() == 0
        log = gw.log()
        bad = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line
               or "never retrieved" in line]
        assert not bad, "\n".join(bad[:10])

        # everything that was in flight is still on disk, and counted as buffered
        buf = DiskBuffer(tmp_path / "data" / "buffer", {"telemetry": Budget(10**9), "control": Budget(10**9)})
        buf.open()
        assert buf.readings("telemetry") == 200 and buf.depth("telemetry") == 10
        buf.close()

        proxy.passthrough()
        proxy.cut()  # the old (stalled) connection is gone; the next one flows
        cloud = CloudCollector(mosquitto.url)
        await cloud.connect()
        gw = GatewayProcess(config, local_port, metrics_port)
        await gw.ready()
        await eventually(lambda: len(cloud.data.readings()) == 200, timeout=30,
                         message=lambda: f"{len(cloud.data.readings())} readings arrived")
        await eventually(lambda: scrape(metrics_port, "edge_readings_delivered") == 200)
        # the accounting identity: restored = delivered (+ nothing filtered, dropped, buffered, pending)
        assert scrape(metrics_port, "edge_readings_restored") == 200
        assert scrape(metrics_port, "edge_readings_buffered") == 0
        assert scrape(metrics_port, "edge_readings_pending") == 0
        assert gw.terminate() == 0
        await cloud.close()
        assert not [line for line in gw.log().splitlines() if " ERROR " in line or "Traceback" in line]
