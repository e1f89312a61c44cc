"""bench/vs_bridge.py's pieces: the mosquitto bridge configuration it builds is one mosquitto accepts
and forwards through, and its counting of readings and rates."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from bench._bridge import CloudTap, MosquittoProcess, bridge_conf, cloud_conf
from bench.vs_bridge import ROOT, Count, bridge_source
from tests.support import free_port, mosquitto_binary, wait_until


def test_bridge_config_forwards_every_reading_to_the_cloud() -> None:
    mosquitto_binary()  # skip (or fail under CI) without mosquitto
    # not pytest's tmp_path: its parents are closed to the user mosquitto runs as (when started as root)
    with tempfile.TemporaryDirectory(prefix="vs-bridge-test-") as name:
        Path(name).chmod(0o755)
        forward_and_count(Path(name))


def forward_and_count(tmp_path: Path) -> None:
    cloud_port, local_port = free_port(), free_port()
    cloud = MosquittoProcess(cloud_conf(cloud_port), cloud_port, tmp_path / "cloud")
    local = MosquittoProcess(bridge_conf(local_port, tmp_path / "local", cloud_port, "bridge-t"), local_port,
                             tmp_path / "local")
    try:
        cloud.wait_listening()
        tap = CloudTap(cloud_port)
        local.wait_listening()
        wait_until(lambda: tap.bridge_states.get("bridge-t") == b"1", 30, message="bridge not connected")
        subprocess.run([sys.executable, str(ROOT / "bench" / "_shaped_publisher.py"), "127.0.0.1", str(local_port),
                        "20", "2", "3", "t"], check=True, capture_output=True, timeout=60)
        count, source = Count(60), bridge_source("t")

        def all_arrived() -> bool:
            source.consume(count, tap.arrivals)
            return len(count.keys) >= 60

        wait_until(all_arrived, 30, message=lambda: f"{len(count.keys)} of 60 readings arrived")
        tap.close()
        assert count.readings == 60
        assert {k[0] for k in count.keys} == {"t-000", "t-001"}
        assert {k[2] for k in count.keys} == {"m0", "m1", "m2"}
        assert count.uplink_bytes > 20 * len("devices/t-000/telemetry")
    finally:
        local.stop()
        cloud.stop()
    assert (tmp_path / "local" / "mosquitto.db").exists()  # persistence works: the bridge's queue is saved


def test_rate_counts_the_readings_between_the_warmup_marks() -> None:
    count = Count(sent=1000)
    for second in range(10):
        count.add(float(second), [("d", second * 100 + i, "m") for i in range(100)])
    # 10 %: 100 readings at t=0; 90 %: 900 at t=8 -> 800 readings in 8 s
    assert count.rate(0.1) == 100.0
    count.add(10.0, [("d", 5, "m")])  # a duplicate adds nothing
    assert len(count.keys) == 1000 and count.readings == 1001
