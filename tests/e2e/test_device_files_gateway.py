"""Device file uploads through a whole gateway (password auth, the default ACL derived from
[topics]): the `device-sim send-file` program resumes an upload another device tried to spoil, the
file is queued for upload (with its name and device), and not one file message reaches the telemetry pipeline."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from device_sim.credentials import Credentials
from device_sim.file_upload import FileSender, LocalFile
from device_sim.publisher import Publisher
from device_sim.settings import BrokerSettings
from gateway.service import GatewayService
from tests.e2e.file_receiver import queued_upload
from tests.e2e.harness import gateway_config, running_gateway
from tests.e2e.security_support import write_passwords
from tests.support import Mosquitto, RecordingClient, eventually, free_port

PASSWORDS = {"dev-a": "secret-a", "dev-b": "secret-b"}
REFUSED = 0x80


def denied(svc: GatewayService, reason: str) -> int:
    return int(svc.snapshot()["security"]["denied"].get(reason, 0))


async def partial_send(port: int, local: LocalFile, chunks: int) -> None:
    """dev-a sends the manifest and the first ``chunks`` chunks, then goes away."""
    sender = FileSender(local, "dev-a", answer_timeout_s=5.0)
    publisher = Publisher(BrokerSettings(port=port, credentials=Credentials(password=PASSWORDS["dev-a"])), "dev-a",
                          subscriptions=[sender.topics["status"]], on_message=sender.on_message)
    await publisher.connect()
    try:
        outcome = await sender.run(publisher, deadline_s=20.0, max_chunks=chunks)
    finally:
        await publisher.close()
    assert outcome.state == "stopped" and outcome.chunks_sent == chunks


async def send_file_cli(port: int, path: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "device_sim", "send-file", str(path), "--port", str(port), *args,
        env={**os.environ, "DEVICE_SIM_PASSWORD": PASSWORDS["dev-a"]},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def test_an_upload_resumes_untouched_by_another_device(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = gateway_config(tmp_path, mosquitto.url, local_broker={"auth": {
        "mode": "password", "password_file": str(write_passwords(tmp_path / "passwd", PASSWORDS)),
        "max_denied_publishes": 0}})
    path = tmp_path / "logs.tar.gz"
    path.write_bytes(os.urandom(200_000))
    local = LocalFile.describe(path, chunk_bytes=8192, meta={"kind": "logs"})
    files = f"devices/dev-a/files/{local.file_id}"
    async with running_gateway(cfg) as svc:
        assert svc.embedded is not None
        port = svc.embedded.address.port
        await partial_send(port, local, 5)
        b = await RecordingClient(port, "dev-b", "dev-b", PASSWORDS["dev-b"]).start().connected()
        try:
            assert await b.subscribe(f"{files}/status") == [REFUSED]
            assert await b.subscribe("devices/dev-b/files/+/status") == [1]
            for index in (5, 6):  # the attacker's chunks, PUBACKed by MQTT 3.1.1 but dropped
                await b.publish(f"{files}/chunk/{index}", b"\0" * 8192)
            await b.publish(f"{files}/manifest", json.dumps({**local.manifest, "size": 10}).encode())
        finally:
            b.stop()
        assert denied(svc, "acl_publish") == 3 and denied(svc, "acl_subscribe") == 1
        code, output = await send_file_cli(port, path, "--device", "dev-a", "--chunk-bytes", "8192",
                                           "--meta", "kind=logs", "--json")
        assert code == 0, output
        summary = json.loads(output.splitlines()[-1])
        assert summary["state"] == "complete" and summary["chunks_sent"] == local.chunks - 5
        await eventually(lambda: queued_upload(svc, "logs.tar.gz", "dev-a") is not None,
                         message="the file queued for upload")
        landed = queued_upload(svc, "logs.tar.gz", "dev-a")
        assert landed is not None and landed.read_bytes() == path.read_bytes()
        receiver = svc.parts.device_files.receiver
        assert receiver.files == 1 and receiver.duplicates == 0 and not receiver.rejected
        block = svc.snapshot()["device_files"]  # the stats document and the status file
        assert block["files"] == 1 and block["chunks"] == local.chunks and block["bytes"] == 200_000
        assert svc.accounting.messages_in == 0 and svc.accounting.balance() == 0  # no file message was telemetry


async def test_an_upload_survives_a_gateway_restart(tmp_path: Path, mosquitto: Mosquitto) -> None:
    listen = f"127.0.0.1:{free_port()}"
    cfg = gateway_config(tmp_path, mosquitto.url, local_broker={"listen": listen, "auth": {
        "mode": "password", "password_file": str(write_passwords(tmp_path / "passwd", PASSWORDS))}})
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(100_000))
    local = LocalFile.describe(path, chunk_bytes=4096)
    port = int(listen.rsplit(":", 1)[1])
    async with running_gateway(cfg) as svc:
        await partial_send(port, local, 9)
        await eventually(lambda: svc.parts.device_files.receiver.chunks == 9, message="9 chunks on disk")
    async with running_gateway(cfg) as svc:
        code, output = await send_file_cli(port, path, "--device", "dev-a", "--chunk-bytes", "4096", "--json")
        assert code == 0, output
        summary = json.loads(output.splitlines()[-1])
        assert summary["chunks_sent"] == local.chunks - 9 and summary["manifests_sent"] == 1
        landed = queued_upload(svc, "model.bin", "dev-a")
        assert landed is not None and landed.read_bytes() == path.read_bytes()
        assert svc.parts.device_files.receiver.duplicates == 0
