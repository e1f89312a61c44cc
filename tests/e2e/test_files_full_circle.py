"""Files all the way round with the real parts: a file dropped in the gateway's outbox and a file a
device sends over the local broker reach the real sink (``--files-dir``) through mosquitto; the sink
answers ``stored``, the gateway deletes its copies and reports ``sent`` then ``stored`` on the
control lane, which the sink stores exactly once; telemetry flows meanwhile with the accounting
identity intact."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

from bridge.cloud.file_rows import FileOptions
from bridge.cloud.sink import Sink
from bridge.cloud.sink_port import open_sink_store
from bridge.mqtt.backoff import DecorrelatedJitter
from tests.e2e.exactly_once import serving
from tests.e2e.harness import gateway_config, local_url, running_gateway
from tests.support import Mosquitto, eventually


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def device_sends(port: int, path: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "device_sim", "send-file", str(path), "--port", str(port), "--device", "cam-1",
        "--chunk-bytes", "4096", "--content-type", "image/jpeg", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_outbox_and_device_files_reach_the_sink_and_the_gateway_forgets_them(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = gateway_config(tmp_path, mosquitto.url, files={"chunk_bytes": 16384, "window": 4})
    received = tmp_path / "received"
    dropped = tmp_path / "report.bin"
    dropped.write_bytes(os.urandom(300_000))
    shot = tmp_path / "shot.jpg"
    shot.write_bytes(os.urandom(50_000))
    report_sha = sha(dropped)
    with open_sink_store(tmp_path / "sink.sqlite", durable=False) as store:
        sink = Sink(store, [mosquitto.url], backoff=DecorrelatedJitter(0.05, 0.5), connect_timeout_s=5.0,
                    files=FileOptions(received))
        async with serving(sink, 10), running_gateway(cfg) as svc:
            uploads = svc.parts.uploads
            assert uploads is not None
            cfg.outbox_dir.mkdir(parents=True, exist_ok=True)
            os.replace(dropped, cfg.outbox_dir / "report.bin")  # written elsewhere, renamed in
            port = int(local_url(svc).rsplit(":", 1)[1])
            await device_sends(port, shot)
            await eventually(lambda: uploads.counters.files_stored == 2, timeout=30,
                             message=lambda: f"stored: {store.files()}")
            await eventually(lambda: store.count("file_status") == 4,  # sent + stored, twice
                             message=lambda: f"{store.count('file_status')} file_status records")
            assert not list(uploads.uploader.sending_dir.iterdir())  # the gateway forgot both
            assert not [p for p in cfg.outbox_dir.iterdir() if not p.name.startswith(".")]
        rows = {f["name"]: f for f in store.files()}
        assert {name: row["state"] for name, row in rows.items()} == {"report.bin": "stored", "shot.jpg": "stored"}
        assert rows["shot.jpg"]["device"] == "cam-1" and rows["shot.jpg"]["content_type"] == "image/jpeg"
        statuses = [s for s, in store.scan("SELECT state FROM file_status ORDER BY seq")]
    assert sorted(statuses) == ["sent", "sent", "stored", "stored"]
    assert sha(received / "gw-test" / "report.bin") == report_sha == rows["report.bin"]["sha256"]
    assert sha(received / "gw-test" / "shot.jpg") == sha(shot)
    assert svc.accounting.balance() == 0
