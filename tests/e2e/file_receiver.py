"""A test receiver of uploads on the cloud broker, playing the sink's part: it reassembles files with
:class:`bridge.transfer.assembly.Assembly`, answers with receipts (``stored`` once a file is whole
and installed, and again for a manifest of a file already stored; ``missing`` for a repeated
manifest of a file under way) and records what it saw: every chunk message (duplicates included),
the FileStatus records on ``P/files/status``, and the gateway's alerts."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import ClientSettings, Message
from bridge.protocol.codec import decode_batch
from bridge.protocol.file_topics import FileTopics
from bridge.protocol.files import Receipt, decode_chunk, decode_manifest, encode_receipt
from bridge.protocol.records import decode_control
from bridge.transfer.assembly import Assembly
from gateway.service import GatewayService


class FileReceiver:
    def __init__(self, root: Path, prefix: str = "edge/gw-test") -> None:
        self.root = root
        self.prefix = prefix
        self.topics = FileTopics(prefix)
        self.conn: MqttConnection | None = None
        self.assemblies: dict[str, Assembly] = {}
        self.stored: dict[str, Path] = {}
        self.chunk_messages = 0
        self.chunk_bytes = 0  # chunk data received, duplicates included
        self.resends = 0  # chunks flagged as resent
        self.per_chunk: Counter[tuple[str, int]] = Counter()
        self.manifests = 0
        self.statuses: list[dict[str, Any]] = []
        self.control: list[dict[str, Any]] = []
        self.readings: set[tuple[str, int | None]] = set()  # (device, seq) of the telemetry received

    async def start(self, url: str) -> FileReceiver:
        settings = ClientSettings(client_id="file-receiver", protocol="5")
        self.conn = await MqttConnection.open(url, settings, on_message=self._on)
        await self.conn.subscribe([(f"{self.prefix}/files/up/+/manifest", 1), (f"{self.prefix}/files/up/+/chunk", 1),
                                   (f"{self.prefix}/files/status", 1), (f"{self.prefix}/alerts", 1),
                                   (f"{self.prefix}/telemetry", 1)])
        return self

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    def sha256(self, file_id: str) -> str:
        return hashlib.sha256(self.stored[file_id].read_bytes()).hexdigest()

    def status_states(self, file_id: str) -> list[str]:
        return [s["state"] for s in self.statuses if s.get("id") == file_id]

    def _receipt(self, receipt: Receipt) -> None:
        assert self.conn is not None
        if not self.conn.closed:
            self.conn.publish(self.topics.receipt("up", receipt.id), encode_receipt(receipt), 1)

    def _on(self, msg: Message) -> None:
        parsed = self.topics.parse(msg.topic)
        if parsed is None and msg.topic.endswith("/telemetry"):
            self.readings.update((r.device, r.seq) for r in decode_batch(msg.payload).readings)
        elif parsed is None:
            record = decode_control(msg.payload)
            (self.statuses if record.get("kind") == "file_status" else self.control).append(record)
        else:
            self._file(*parsed[1:], msg.payload)

    def _file(self, file_id: str, part: str, payload: bytes) -> None:
        if part == "manifest":
            self._manifest(file_id, payload)
        elif part == "chunk":
            self._chunk(file_id, payload)

    def _manifest(self, file_id: str, payload: bytes) -> None:
        self.manifests += 1
        manifest = decode_manifest(payload)
        if file_id in self.stored:
            self._receipt(Receipt(file_id, "stored"))
            return
        repeated = file_id in self.assemblies
        asm = self.assemblies.get(file_id) or Assembly.open(self.root / ".work", manifest)
        self.assemblies[file_id] = asm
        if asm.complete:
            self._install(asm)
        elif repeated:
            self._receipt(Receipt(file_id, "missing", tuple(asm.missing())))

    def _chunk(self, file_id: str, payload: bytes) -> None:
        chunk = decode_chunk(payload)
        self.chunk_messages += 1
        self.chunk_bytes += len(chunk.data)
        self.resends += chunk.resend
        self.per_chunk[file_id, chunk.index] += 1
        asm = self.assemblies.get(file_id)
        if asm is None:
            if file_id not in self.stored:
                self._receipt(Receipt(file_id, "missing", (), manifest=True))
            return
        asm.write(chunk)
        if asm.complete:
            self._install(asm)

    def _install(self, asm: Assembly) -> None:
        self.stored[asm.id] = asm.install(self.root / "stored", f"{asm.id}-{asm.manifest.name}")
        del self.assemblies[asm.id]
        self._receipt(Receipt(asm.id, "stored", sha256=asm.manifest.sha256))


async def drop(path: Path, data: bytes) -> None:
    """Put a file into an outbox the documented way: write under a dot-name, then rename in."""
    tmp = path.with_name("." + path.name + ".tmp")
    await asyncio.to_thread(tmp.write_bytes, data)
    tmp.rename(path)


def queued_upload(svc: GatewayService, name: str, device: str) -> Path | None:
    """The file a device sent, as the gateway queued it for upload (``sending/{id}``), or None yet."""
    uploads = svc.parts.uploads
    assert uploads is not None
    for file_id, t in uploads.uploader.transfers.items():
        if (t.row.manifest.name, t.row.manifest.device) == (name, device):
            return uploads.uploader.sending_dir / file_id
    return None
