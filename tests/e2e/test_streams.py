"""Stream ids end to end: a gateway whose data dir is wiped, or restored from a backup, starts a new
stream; the sink (dedup by gateway, stream, lane, seq) stores every batch and control record of
every run and discards nothing as a duplicate, although sequence numbers repeat."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from bridge.cloud.sink_store import SinkStore
from tests.e2e.harness import Devices, gateway_config, local_url, running_gateway, telemetry
from tests.e2e.test_sink import running_sink
from tests.support import Mosquitto, eventually


async def _one_run(cfg_tmp: Path, url: str, run: int) -> tuple[str, str]:
    """Start the gateway, send 20 readings (2 batches of 10) and one device event, stop it."""
    cfg = gateway_config(cfg_tmp, url, batch={"max_count": 10, "max_age_s": 30.0})
    t0 = int(time.time() * 1000) - 5_000
    async with running_gateway(cfg) as svc:
        devices = await Devices.connect(local_url(svc), client_id=f"devs-{run}")
        await devices.publish_all([telemetry("d1", run * 100 + i, t0 + i, v=run + i / 10) for i in range(20)]
                                  + [("devices/d1/events", b'{"run": %d}' % run)])
        await devices.close()
        acc = svc.accounting
        await eventually(lambda: acc.delivered == 20 and acc.control_delivered == 1, timeout=30,
                         message=lambda: f"delivered={acc.delivered} control={acc.control_delivered}")
        disk = svc.snapshot()["disk"]
        return disk["stream"], disk["new_stream_reason"]


async def test_wiped_and_restored_data_dirs_start_new_streams_and_nothing_is_a_duplicate(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    store = SinkStore(tmp_path / "sink.sqlite", durable=False)
    data = tmp_path / "data"
    async with running_sink(mosquitto.url, store) as sink:
        first, why = await _one_run(tmp_path, mosquitto.url, 1)  # telemetry seqs 1-2, control seq 1
        assert why == "new buffer"
        shutil.copytree(data, tmp_path / "backup")  # a cold backup of the stopped gateway
        second, why = await _one_run(tmp_path, mosquitto.url, 2)  # clean restart: same stream, seqs 3-4, control 2
        assert why == ""
        shutil.copytree(tmp_path / "backup", data, dirs_exist_ok=True)  # restore the backup in place
        third, why = await _one_run(tmp_path, mosquitto.url, 3)  # seqs 3-4 and control 2 again, new stream
        assert "restored" in why
        shutil.rmtree(data)  # wipe
        fourth, why = await _one_run(tmp_path, mosquitto.url, 4)  # seqs 1-2 and control 1 again, new stream
        assert why == "new buffer"
        await eventually(lambda: sink.counters.batches == 8 and sink.counters.events == 4, timeout=30,
                         message=lambda: f"{sink.counters}")
        assert sink.counters.duplicates == 0 and sink.counters.readings == 80 and sink.counters.invalid == 0
    assert first == second and len({second, third, fourth}) == 3
    streams = {s.stream: s for s in store.streams()["gw-test"]}
    assert set(streams) == {first, third, fourth}
    assert (streams[first].batches, streams[third].batches, streams[fourth].batches) == (4, 2, 2)
    assert store.gaps() == {}  # each stream's seqs are complete within the stream
    store.close()
