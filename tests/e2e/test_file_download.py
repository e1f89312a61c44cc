"""Downloads end to end through mosquitto: ``edge-gateway files push`` (and a plain paho client playing a
foreign or broken pusher) -> a running gateway -> its inbox, with FileStatus answers on the control lane.
The inbox is watched all along: it never shows a file that is not whole."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from bridge.cloud.files_push import FilePusher
from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import ClientSettings, Message
from bridge.protocol.file_topics import FileTopics
from bridge.transfer.plan import plan_file, read_chunk
from gateway.observe.status import render_status
from gateway.service import GatewayService
from tests.e2e.download_support import PREFIX, ForeignPusher, InboxWatch, make_file, sha256
from tests.e2e.gateway_process import GatewayProcess, scrape, write_config
from tests.e2e.harness import gateway_config, running_gateway
from tests.support import Mosquitto, eventually, free_port

MB = 1024 * 1024


@asynccontextmanager
async def gateway_and_pusher(tmp_path: Path, mosquitto: Mosquitto, **files: Any) -> AsyncIterator[
        tuple[GatewayService, ForeignPusher]]:
    cfg = gateway_config(tmp_path, mosquitto.url, files=files)
    async with running_gateway(cfg) as svc:
        foreign = await ForeignPusher.connect(mosquitto.port)
        try:
            await foreign.until_listening()
            yield svc, foreign
        finally:
            await foreign.close()


async def test_push_cli_installs_a_2mb_file_answers_received_and_again_for_a_repeated_manifest(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    source = make_file(tmp_path, "model-v1.bin", 2 * MB + 123)
    async with gateway_and_pusher(tmp_path, mosquitto) as (svc, foreign):
        with InboxWatch(svc.cfg.inbox_dir, {sha256(source)}) as watch:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "files", "push", "--url", mosquitto.url, "--gateway", "gw-test",
                str(source), "--device", "dev-1", "--name", "model.bin", "--timeout-s", "60", "--json",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, err.decode()
        answer = json.loads(out)
        assert answer["state"] == "received" and answer["resent"] == 0 and answer["chunks"] == 33
        status = answer["status"]
        assert (status["path"], status["size"], status["sha256"]) == ("dev-1/model.bin", source.stat().st_size,
                                                                      sha256(source))
        installed = svc.cfg.inbox_dir / "dev-1" / "model.bin"
        assert sha256(installed) == sha256(source)
        assert watch.seen == {"dev-1/model.bin": {sha256(source)}}
        assert not list((svc.cfg.files_dir / "incoming").iterdir())  # nothing left behind
        # the control lane carried the answer: the foreign client saw it too, numbered like any record
        record = await foreign.status(answer["id"], "received")
        assert record["seq"] > 0 and record["path"] == "dev-1/model.bin"

        again = plan_file(source, name="model.bin", device="dev-1", file_id=answer["id"])
        foreign.manifest(again)
        second = await foreign.status(answer["id"], "received", count=2)
        assert second["sha256"] == sha256(source)
        d = svc.downloads
        assert d is not None
        assert (d.counters.received, d.counters.received_again, d.counters.chunks) == (1, 1, 33)
        shown = io.StringIO()
        render_status({**svc.status(), "stale": False, "pid": 1, "ts": time.time(), "age_s": 0},
                      Console(file=shown, width=100))
        assert "Downloads: 0 under way (0 bytes reserved), 1 received, failed: none" in shown.getvalue()


class GatedPusher(FilePusher):
    """The real pusher, holding back every chunk from ``hold_from`` on until ``gate`` is set."""

    def __init__(self, *args: Any, hold_from: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.hold_from = hold_from

    def _fill(self) -> None:
        if self.gate.is_set():
            super()._fill()
        else:
            held = [i for i in self._queue if i >= self.hold_from]
            self._queue = type(self._queue)(i for i in self._queue if i < self.hold_from)
            super()._fill()
            self._queue.extend(held)


async def test_gateway_killed_mid_download_resumes_and_only_missing_chunks_are_resent(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    local_port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, local_port, metrics_port, mosquitto.url, max_count=100, max_age_s=0.2,
                          extra="[files]\nstall_s = 30\n")
    source = make_file(tmp_path, "firmware.img", 2 * MB)
    manifest = plan_file(source)
    incoming = tmp_path / "data" / "files" / "incoming"
    inbox = tmp_path / "data" / "files" / "inbox"

    def have() -> int:
        marks = incoming / f"{manifest.id}.have"
        return sum(marks.read_bytes()) if marks.exists() else 0

    pusher: GatedPusher | None = None

    def on_message(msg: Message) -> None:
        if pusher is not None:
            pusher.on_message(msg)

    conn = await MqttConnection.open(mosquitto.url, ClientSettings(client_id="test-pusher"), on_message=on_message)
    gateway = GatewayProcess(config, local_port, metrics_port)
    try:
        await gateway.ready()
        await eventually(lambda: scrape(metrics_port, "edge_uplink_connected") == 1, timeout=30)
        pusher = GatedPusher(conn, FileTopics(PREFIX), source, manifest, window=4, resend_after_s=0.2,
                             quiet_s=1.0, hold_from=12)
        with InboxWatch(inbox, {manifest.sha256}) as watch:
            run = asyncio.ensure_future(pusher.run(120))
            await eventually(lambda: have() == 12, timeout=30, message=lambda: f"{have()} chunks on disk")
            gateway.kill()  # kill -9 with 12 of 32 chunks on disk
            assert (incoming / f"{manifest.id}.part").exists() and not list(inbox.glob("*"))
            pusher.gate.set()  # what goes out while the gateway is down is dropped by the broker
            await eventually(lambda: pusher is not None and not pusher._inflight and len(pusher._unconfirmed) == 4)
            lost = pusher.outcome.chunks - 12  # at most a window: the gateway has not confirmed 4 chunks
            assert have() == 12 and not watch.seen and 0 <= lost <= 4
            gateway = GatewayProcess(config, local_port, metrics_port)
            outcome = await asyncio.wait_for(run, 120)
        assert outcome.state == "received", (outcome, gateway.log())
        assert outcome.chunks == 32 and outcome.resent == lost, outcome  # only those the gateway missed, once
        assert outcome.missing_heard >= 1
        assert sha256(inbox / "firmware.img") == manifest.sha256
        await eventually(lambda: scrape(metrics_port, "edge_files_download_chunks") == 20)  # this run's
        assert scrape(metrics_port, "edge_files_download_received") == 1
        assert scrape(metrics_port, "edge_files_download_duplicate_chunks") == 0
    finally:
        gateway.__exit__()
        await conn.close()


async def test_corrupted_chunks_are_counted_asked_again_and_the_file_installed_only_when_whole(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    source = make_file(tmp_path, "rules.pack", 5 * 1024)
    manifest = plan_file(source, chunk_size=1024)
    async with gateway_and_pusher(tmp_path, mosquitto, stall_s=60) as (svc, foreign):
        d = svc.downloads
        assert d is not None
        with InboxWatch(svc.cfg.inbox_dir, {manifest.sha256}) as watch:
            foreign.chunk(source, manifest, 0)  # before its manifest: dropped, the manifest asked for
            early = await foreign.status(manifest.id, "missing")
            assert early["manifest"] is True and d.counters.chunks == 0
            foreign.manifest(manifest)
            first = await foreign.status(manifest.id, "missing", count=2)
            assert first["missing"] == [[0, 4]] and first["manifest"] is False
            for i in (0, 1, 2, 4):
                foreign.chunk(source, manifest, i)
            bad = bytes(b ^ 0xFF for b in source.read_bytes()[3072:4096])
            foreign.chunk(source, manifest, 3, data=bad)  # a consistent chunk, but not the manifest's
            def refused() -> list[dict[str, Any]]:  # (progress statuses come in between)
                return [s for s in foreign.statuses(manifest.id) if s.get("reason") == "hash_mismatch"]

            await eventually(lambda: len(refused()) == 1)
            assert refused()[0]["missing"] == [[3, 3]]
            _, good_digest = read_chunk(source, manifest, 3)
            foreign.chunk(source, manifest, 3, data=bad, digest=good_digest)  # data that fails its own hash
            await eventually(lambda: len(refused()) == 2)
            assert refused()[1]["missing"] == [[3, 3]]
            assert d.counters.rejected["hash_mismatch"] == 2 and d.counters.chunks == 4
            assert all(s["state"] == "missing" for s in foreign.statuses(manifest.id)) and not watch.seen
            foreign.chunk(source, manifest, 3)
            done = await foreign.status(manifest.id, "received")
        assert done["path"] == "rules.pack" and sha256(svc.cfg.inbox_dir / "rules.pack") == manifest.sha256
        assert d.counters.chunks == 5 and d.counters.received == 1
        assert d.counters.rejected["unknown_file"] >= 2  # the early chunk and the listening probe


async def test_hostile_names_oversized_files_and_a_full_budget_are_refused_and_counted(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    source = make_file(tmp_path, "ok.bin", 40_000)
    big = make_file(tmp_path, "big.bin", 150_000)
    async with gateway_and_pusher(tmp_path, mosquitto, max_file_bytes=100_000, max_disk_bytes=60_000) as (
            svc, foreign):
        d = svc.downloads
        assert d is not None
        with InboxWatch(svc.cfg.inbox_dir, set()) as watch:
            refused: dict[str, str] = {}
            for name in ("../x", "/etc/passwd", ".hidden", "a/../../b", "con"):
                m = plan_file(source)
                foreign.manifest(m, name=name)
                refused[name] = (await foreign.status(m.id, "failed"))["reason"]
            m_big = plan_file(big)
            foreign.manifest(m_big)
            refused["big"] = (await foreign.status(m_big.id, "failed"))["reason"]
            first, second = plan_file(source), plan_file(source)
            foreign.manifest(first)  # takes 40 000 of the 60 000 bytes
            await foreign.status(first.id, "missing")
            foreign.manifest(second)
            refused["second"] = (await foreign.status(second.id, "failed"))["reason"]
            assert not watch.seen
        assert refused == {"../x": "bad_name", "/etc/passwd": "bad_name", ".hidden": "bad_name",
                           "a/../../b": "bad_name", "con": "bad_name", "big": "too_large", "second": "no_space"}
        assert dict(d.counters.failed) == {"bad_name": 5, "too_large": 1, "no_space": 1}
        assert d.bytes_in_use() == 40_000
        assert not (tmp_path / "x").exists() and not list(svc.cfg.files_dir.rglob("*passwd*"))
        assert sorted(p.name for p in (svc.cfg.files_dir / "incoming").iterdir()) == sorted(
            f"{first.id}.{part}" for part in ("have", "manifest", "part"))
        doc = svc.snapshot()["downloads"]
        assert doc["failed"] == {"bad_name": 5, "too_large": 1, "no_space": 1} and doc["in_progress"] == 1


async def test_a_push_started_while_the_gateway_is_offline_completes_once_it_connects(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    source = make_file(tmp_path, "rules-v2.pack", 300_000)
    manifest = plan_file(source, chunk_size=16 * 1024)
    pusher: FilePusher | None = None

    def on_message(msg: Message) -> None:
        if pusher is not None:
            pusher.on_message(msg)

    conn = await MqttConnection.open(mosquitto.url, ClientSettings(client_id="test-early-pusher"),
                                     on_message=on_message)
    try:
        pusher = FilePusher(conn, FileTopics(PREFIX), source, manifest, window=4, quiet_s=0.5)
        pushing = asyncio.ensure_future(pusher.run(60))
        # a window of chunks goes out to nobody, then the pusher waits for the gateway
        await eventually(lambda: pusher is not None and pusher.outcome.chunks == 4 and not pusher._inflight)
        async with running_gateway(gateway_config(tmp_path, mosquitto.url)) as svc:
            with InboxWatch(svc.cfg.inbox_dir, {manifest.sha256}):
                outcome = await asyncio.wait_for(pushing, 60)
            assert outcome.state == "received", outcome
            assert outcome.manifests >= 2  # offered again until the gateway answered
            assert (outcome.chunks, outcome.resent) == (manifest.chunks, 4)  # only the lost window again
            assert sha256(svc.cfg.inbox_dir / "rules-v2.pack") == manifest.sha256
    finally:
        await conn.close()
