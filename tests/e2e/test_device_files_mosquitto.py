"""Device file uploads through the shipped conf/mosquitto/ (external broker mode, its ACL file): a device
sends a file to the gateway, which reads it as its own user and answers on the device's status topic;
another device can neither write into the upload nor read its answers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from device_sim.credentials import Credentials
from device_sim.file_upload import FileSender, LocalFile
from device_sim.publisher import Publisher
from device_sim.settings import BrokerSettings
from gateway.config import Secrets
from gateway.service import GatewayService
from gateway.source.broker import EmbeddedBroker
from tests.e2e.file_receiver import queued_upload
from tests.e2e.harness import gateway_config
from tests.secure_mosquitto import Deployment, secure_mosquitto
from tests.support import RecordingClient, eventually

PASSWORDS = {"dev-a": "pw-a", "dev-b": "pw-b", "edge-gateway": "pw-gw"}

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    with secure_mosquitto(PASSWORDS) as running:
        yield running


async def test_a_device_file_goes_through_the_shipped_broker_and_only_its_device_sees_it(
        deployment: Deployment, amqtt_broker: EmbeddedBroker, tmp_path: Path) -> None:
    cloud_url = f"mqtt://127.0.0.1:{amqtt_broker.address.port}"
    local = {"mode": "external", "url": f"mqtt://127.0.0.1:{deployment.port}", "username": "edge-gateway"}
    cfg = gateway_config(tmp_path, cloud_url, protocol="3.1.1", local_broker=local)
    svc = GatewayService(cfg, Secrets(local_password=SecretStr(PASSWORDS["edge-gateway"])))
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    path = tmp_path / "dump.bin"
    path.write_bytes(os.urandom(50_000))
    local_file = LocalFile.describe(path, chunk_bytes=4096)
    files = f"devices/dev-a/files/{local_file.file_id}"
    spy = None
    try:
        await eventually(lambda: svc.external is not None and svc.external.connection is not None)
        spy = await asyncio.to_thread(lambda: RecordingClient(deployment.port, "dev-b", "dev-b", "pw-b").start()
                                      .wait_connected())
        assert await asyncio.to_thread(spy.wait_subscribe, "devices/+/files/#") == [1]  # granted, never delivered
        spy.send(f"{files}/chunk/0", b"\0" * 4096)  # before dev-a starts: a planted chunk would be "missing"
        sender = FileSender(local_file, "dev-a", answer_timeout_s=5.0)
        publisher = Publisher(BrokerSettings(port=deployment.port, credentials=Credentials(password="pw-a")),
                              "dev-a", subscriptions=[sender.topics["status"]], on_message=sender.on_message)
        await publisher.connect()
        try:
            outcome = await sender.run(publisher, deadline_s=30.0)
        finally:
            await publisher.close()
        assert outcome.state == "complete", outcome
        assert outcome.chunks_sent == local_file.chunks and outcome.manifests_sent == 1
        await eventually(lambda: queued_upload(svc, "dump.bin", "dev-a") is not None,
                         message="the file queued for upload")
        landed = queued_upload(svc, "dump.bin", "dev-a")
        assert landed is not None and landed.read_bytes() == path.read_bytes()
        receiver = svc.parts.device_files.receiver
        assert receiver.rejected == {} and receiver.duplicates == 0  # dev-b's chunk never reached the gateway
        assert spy.topics() == []  # nothing of dev-a's upload, not its status, not its chunks
        assert svc.accounting.messages_in == 0
    finally:
        if spy is not None:
            spy.stop()
        stop.set()
        await asyncio.wait_for(task, 30)
