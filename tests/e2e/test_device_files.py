"""Device file uploads through the real embedded broker: device_sim's sender (a real MQTT client that
knows only the documented contract) against the intake, which hands verified files to a recording
callback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from device_sim.file_upload import FileSender, LocalFile, Outcome
from device_sim.publisher import Publisher
from device_sim.settings import BrokerSettings
from gateway.config_sections import TopicsSection
from gateway.files.device_contract import DeviceFileTopics
from gateway.files.device_intake import DeviceIntake
from gateway.files.device_receiver import DeviceReceiver, Limits
from gateway.files.device_staging import bytes_under
from gateway.source.broker import EmbeddedBroker
from tests.chaos import ChaosProxy
from tests.support import RecordingClient, eventually


@dataclass
class Handed:
    """What the intake handed on: one entry per file."""

    calls: list[tuple[bytes, str, str, dict[str, Any], str]] = field(default_factory=list)

    def __call__(self, path: Path, name: str, content_type: str, meta: Mapping[str, Any], device: str) -> None:
        self.calls.append((path.read_bytes(), name, content_type, dict(meta), device))


@dataclass
class Rig:
    broker: EmbeddedBroker
    intake: DeviceIntake
    handed: Handed
    telemetry: list[str]
    files_dir: Path

    @property
    def port(self) -> int:
        return self.broker.address.port

    @property
    def receiver(self) -> DeviceReceiver:
        return self.intake.receiver


LIMITS = Limits(enabled=True, max_file_bytes=4 * 1024 * 1024, max_disk_bytes=64 * 1024 * 1024, timeout_s=3600.0)


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    limits = getattr(request, "param", LIMITS)
    handed, telemetry = Handed(), []
    files_dir = tmp_path / "files"
    broker: EmbeddedBroker | None = None

    async def publish(topic: str, payload: bytes) -> None:
        assert broker is not None
        await broker.publish(topic, payload, qos=1)

    receiver = DeviceReceiver(files_dir / "devices", DeviceFileTopics(TopicsSection()), limits, handed,
                              used_bytes=lambda: bytes_under(files_dir))
    intake = DeviceIntake(receiver, publish)
    broker = EmbeddedBroker("127.0.0.1", 0, on_message=intake.route(lambda topic, _p: telemetry.append(topic)))
    await broker.start()
    stop = asyncio.Event()
    task = asyncio.create_task(intake.run(stop))
    try:
        yield Rig(broker, intake, handed, telemetry, files_dir)
    finally:
        stop.set()
        await task
        await broker.stop()


def some_file(tmp_path: Path, size: int, name: str = "snapshot.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


async def send(rig: Rig, local: LocalFile, device: str = "cam-1", *, max_chunks: int | None = None) -> Outcome:
    """One device process: connect, send (or stop after ``max_chunks``), disconnect."""
    sender = FileSender(local, device, answer_timeout_s=2.0)
    publisher = Publisher(BrokerSettings(port=rig.port), device, subscriptions=[sender.topics["status"]],
                          on_message=sender.on_message)
    await publisher.connect()
    try:
        return await sender.run(publisher, deadline_s=30.0, max_chunks=max_chunks)
    finally:
        await publisher.close()


async def test_a_device_sends_a_1_mb_file_and_the_callback_gets_the_exact_bytes(rig: Rig, tmp_path: Path) -> None:
    path = some_file(tmp_path, 1_000_000)
    local = LocalFile.describe(path, chunk_bytes=64 * 1024, content_type="image/jpeg", meta={"shot": "7"})
    outcome = await send(rig, local)
    assert outcome.state == "complete", outcome
    assert outcome.chunks_sent == local.chunks == 16 and outcome.manifests_sent == 1
    assert rig.handed.calls == [(path.read_bytes(), "snapshot.bin", "image/jpeg", {"shot": "7"}, "cam-1")]
    assert [a["state"] for a in outcome.answers] == ["accepted", "complete"]
    assert rig.telemetry == []  # not one file message reached the telemetry side
    assert rig.receiver.files == 1 and rig.receiver.bytes == 1_000_000 and not rig.receiver.rejected
    assert not list((rig.files_dir / "devices" / "cam-1").glob("*.part"))
    again = await send(rig, local)  # the same file again: complete at once, handed on once only
    assert again.state == "complete" and again.chunks_sent == 0 and len(rig.handed.calls) == 1


async def test_a_device_that_disconnects_mid_file_resumes_with_only_the_missing_chunks(rig: Rig,
                                                                                        tmp_path: Path) -> None:
    path = some_file(tmp_path, 300 * 1024 + 17)
    local = LocalFile.describe(path, chunk_bytes=16 * 1024)
    first = await send(rig, local, max_chunks=7)
    assert first.state == "stopped" and first.chunks_sent == 7
    await eventually(lambda: rig.receiver.chunks == 7 and not len(rig.intake), message="7 chunks written")
    second = await send(rig, local)  # a new process: its manifest is answered with what is missing
    assert second.state == "complete", second
    assert second.answers[0]["state"] == "missing" and second.answers[0]["chunks"] == [[7, local.chunks - 1]]
    assert second.chunks_sent == local.chunks - 7
    assert rig.receiver.duplicates == 0 and rig.receiver.chunks == local.chunks
    assert rig.handed.calls[0][0] == path.read_bytes()


async def test_telemetry_still_goes_to_ingest(rig: Rig) -> None:
    device = await RecordingClient(rig.port, "d1").start().connected()
    try:
        assert await device.publish("devices/d1/telemetry", b'{"t": 1}')
        assert await device.publish("devices/d1/telemetry/files", b"2")  # a metric named "files"
        assert await device.publish("devices/d1/files/f1/chunk/0", b"x")  # a chunk: not telemetry
        await eventually(lambda: len(rig.telemetry) == 2, message="telemetry handed to ingest")
        assert rig.telemetry == ["devices/d1/telemetry", "devices/d1/telemetry/files"]
    finally:
        device.stop()


async def test_a_chunk_without_a_manifest_is_answered_missing(rig: Rig) -> None:
    device = await RecordingClient(rig.port, "d1").start().connected()
    try:
        assert await device.subscribe("devices/d1/files/+/status") == [1]
        assert await device.publish("devices/d1/files/f1/chunk/3", b"x" * 1024)
        status = "devices/d1/files/f1/status"
        await eventually(lambda: device.has(status), message="a status for the unknown file")
        assert json.loads(device.on(status)[0]) == {"state": "missing", "chunks": [], "manifest": True}
        assert rig.receiver.rejected["unknown_file"] == 1
    finally:
        device.stop()


def lying(local: LocalFile, **changes: Any) -> LocalFile:
    return replace(local, manifest={**local.manifest, **changes})


SMALL = replace(LIMITS, max_file_bytes=100_000)


@pytest.mark.parametrize("rig", [SMALL], indirect=True)
async def test_bad_names_oversized_files_and_wrong_hashes_fail_and_are_counted(rig: Rig, tmp_path: Path) -> None:
    small = LocalFile.describe(some_file(tmp_path, 5000), chunk_bytes=1024)
    outcome = await send(rig, lying(small, name="../../etc/passwd"))
    assert (outcome.state, outcome.reason, outcome.chunks_sent) == ("failed", "bad_name", 0)
    big = LocalFile.describe(some_file(tmp_path, 200_000, "big.bin"), chunk_bytes=64 * 1024)
    outcome = await send(rig, big)
    assert (outcome.state, outcome.reason, outcome.chunks_sent) == ("failed", "too_large", 0)
    outcome = await send(rig, lying(small, sha256=hashlib.sha256(b"something else").hexdigest()))
    assert (outcome.state, outcome.reason, outcome.chunks_sent) == ("failed", "hash_mismatch", small.chunks)
    outcome = await send(rig, lying(small, chunk_size=100))
    assert (outcome.state, outcome.reason) == ("failed", "malformed")
    assert rig.receiver.rejected == {"bad_name": 1, "too_large": 1, "hash_mismatch": 1, "malformed": 1}
    assert rig.handed.calls == []
    assert not [p for p in (rig.files_dir / "devices").rglob("*") if p.is_file()]  # nothing partial left


async def test_a_link_cut_mid_file_costs_at_most_the_chunks_in_flight(rig: Rig, tmp_path: Path) -> None:
    path = some_file(tmp_path, 400_000)
    local = LocalFile.describe(path, chunk_bytes=4096)
    async with ChaosProxy("127.0.0.1", rig.port) as proxy:
        sender = FileSender(local, "cam-1", answer_timeout_s=2.0)
        publisher = Publisher(BrokerSettings(port=proxy.port), "cam-1", subscriptions=[sender.topics["status"]],
                              on_message=sender.on_message)
        await publisher.connect()
        try:
            run = asyncio.create_task(sender.run(publisher, deadline_s=60.0))
            await eventually(lambda: rig.receiver.chunks >= 30, message="30 chunks in")
            proxy.cut()
            outcome = await run
        finally:
            await publisher.close()
    assert outcome.state == "complete", outcome
    assert publisher.reconnects == 1
    assert rig.handed.calls[0][0] == path.read_bytes()
    assert rig.receiver.chunks == local.chunks and rig.receiver.duplicates <= 20  # paho resends its window


@pytest.mark.parametrize("rig", [replace(LIMITS, timeout_s=1.0)], indirect=True)
async def test_an_abandoned_upload_expires_and_is_counted(rig: Rig, tmp_path: Path) -> None:
    local = LocalFile.describe(some_file(tmp_path, 10_000), chunk_bytes=1024)
    assert (await send(rig, local, max_chunks=3)).state == "stopped"
    await eventually(lambda: rig.receiver.rejected["expired"] == 1, message="the upload expired")
    assert rig.receiver.under_way == 0
    assert not [p for p in (rig.files_dir / "devices").rglob("*") if p.is_file()]
    again = await send(rig, local)  # the device comes back later: it starts over, and completes
    assert again.state == "complete" and again.answers[0]["state"] == "accepted"
