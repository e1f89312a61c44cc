"""A device sending a file to the gateway, as real firmware would (docs/device-sim.md, "send-file").

The contract, re-stated here on purpose (the simulator imports nothing of the gateway's): publish
a JSON manifest (``name``, ``size``, ``sha256`` of the whole, ``chunk_size``, optional
``content_type`` and ``meta``) on ``devices/{id}/files/{file_id}/manifest``, QoS 1; the gateway
answers on ``devices/{id}/files/{file_id}/status`` with ``accepted`` or ``missing`` and the chunk
ranges it wants; publish each of those chunks (raw bytes, every one ``chunk_size`` long but the
last) on ``devices/{id}/files/{file_id}/chunk/{index}``, QoS 1; then wait for ``complete``. When no
answer comes, publish the manifest again: the gateway then says what it still misses. ``failed``
(with a reason) ends the transfer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_sim.errors import SimConfigError, SimConnectError
from device_sim.publisher import Publisher

MIN_CHUNK_BYTES, MAX_CHUNK_BYTES = 1024, 1024 * 1024
ACK_TIMEOUT_S = 30.0


def file_topics(device: str, file_id: str) -> dict[str, str]:
    base = f"devices/{device}/files/{file_id}"
    return {"manifest": f"{base}/manifest", "chunk": f"{base}/chunk/{{index}}", "status": f"{base}/status"}


@dataclass(frozen=True)
class LocalFile:
    """The file to send and its manifest."""

    path: Path
    manifest: dict[str, Any]
    file_id: str

    @classmethod
    def describe(cls, path: Path, *, chunk_bytes: int, name: str | None = None, file_id: str | None = None,
                 content_type: str | None = None, meta: dict[str, Any] | None = None) -> LocalFile:
        """Hash ``path`` once. The file id defaults to the first 32 hex digits of its SHA-256, so
        sending the same file again (after a crash, a reboot) resumes the same upload."""
        if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
            raise SimConfigError(f"chunk size must be {MIN_CHUNK_BYTES}..{MAX_CHUNK_BYTES} bytes", "--chunk-bytes")
        digest, size = hashlib.sha256(), 0
        try:
            with path.open("rb") as f:
                while block := f.read(1024 * 1024):
                    digest.update(block)
                    size += len(block)
        except OSError as exc:
            raise SimConfigError(f"cannot read {path}: {exc}", "PATH") from exc
        manifest: dict[str, Any] = {"name": name or path.name, "size": size, "sha256": digest.hexdigest(),
                                    "chunk_size": chunk_bytes}
        if content_type:
            manifest["content_type"] = content_type
        if meta:
            manifest["meta"] = meta
        return cls(path, manifest, file_id or digest.hexdigest()[:32])

    @property
    def chunks(self) -> int:
        size, chunk = self.manifest["size"], self.manifest["chunk_size"]
        return int((size + chunk - 1) // chunk)

    def read_chunk(self, index: int) -> bytes:
        chunk = self.manifest["chunk_size"]
        with self.path.open("rb") as f:
            f.seek(index * chunk)
            return f.read(chunk)


@dataclass
class Outcome:
    state: str = "none"  # complete | failed | timeout
    reason: str = ""
    chunks_sent: int = 0
    bytes_sent: int = 0
    manifests_sent: int = 0
    answers: list[dict[str, Any]] = field(default_factory=list)

    def summary(self, file: LocalFile) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "file_id": file.file_id, "name": file.manifest["name"],
                "size": file.manifest["size"], "sha256": file.manifest["sha256"], "chunks": file.chunks,
                "chunks_sent": self.chunks_sent, "bytes_sent": self.bytes_sent, "manifests_sent": self.manifests_sent}


def wanted(answer: dict[str, Any], chunks: int) -> list[int]:
    """The chunk indexes an ``accepted`` or ``missing`` answer asks for (ranges are inclusive)."""
    out: set[int] = set()
    for pair in answer.get("chunks") or []:
        if isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, int) for x in pair):
            out.update(i for i in range(pair[0], pair[1] + 1) if 0 <= i < chunks)
    return sorted(out)


class FileSender:
    """Sends one file over ``publisher`` (connected, subscribed to the status topic, messages to
    :meth:`on_message`)."""

    def __init__(self, file: LocalFile, device: str, *, answer_timeout_s: float = 10.0) -> None:
        self.file, self.device = file, device
        self.topics = file_topics(device, file.file_id)
        self.answer_timeout_s = answer_timeout_s
        self.outcome = Outcome()
        self._answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic != self.topics["status"]:
            return
        try:
            answer = json.loads(payload)
        except ValueError:
            return
        if isinstance(answer, dict):
            self.outcome.answers.append(answer)
            self._answers.put_nowait(answer)

    async def run(self, publisher: Publisher, *, deadline_s: float, max_chunks: int | None = None) -> Outcome:
        """Until ``complete``, ``failed`` or ``deadline_s``. ``max_chunks`` stops after sending that
        many chunks (a device that loses power mid-file; the state is then ``stopped``)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        answer: dict[str, Any] | None = None
        while loop.time() < end:
            if answer is None:
                answer = await self._ask(publisher, end)
                continue
            state = answer.get("state")
            if state in ("complete", "failed"):
                self.outcome.state, self.outcome.reason = str(state), str(answer.get("reason", ""))
                return self.outcome
            if answer.get("manifest") is True:  # the gateway does not know the file (any more)
                answer = await self._ask(publisher, end)
                continue
            want = wanted(answer, self.file.chunks) if state in ("accepted", "missing") else []
            if max_chunks is not None and self.outcome.chunks_sent + len(want) > max_chunks:
                await self._send(publisher, want[:max_chunks - self.outcome.chunks_sent])
                self.outcome.state = "stopped"
                return self.outcome
            await self._send(publisher, want)
            answer = await self._next_answer(min(self.answer_timeout_s, max(0.0, end - loop.time())))
        self.outcome.state, self.outcome.reason = "timeout", f"no 'complete' within {deadline_s:g} s"
        return self.outcome

    async def _ask(self, publisher: Publisher, end: float) -> dict[str, Any] | None:
        while not self._answers.empty():  # answers to earlier questions are stale now
            self._answers.get_nowait()
        manifest = json.dumps(self.file.manifest, separators=(",", ":")).encode()
        await self._publish(publisher, self.topics["manifest"], manifest)
        self.outcome.manifests_sent += 1
        left = end - asyncio.get_running_loop().time()
        return await self._next_answer(min(self.answer_timeout_s, max(0.0, left)))

    async def _next_answer(self, timeout: float) -> dict[str, Any] | None:
        try:
            return await asyncio.wait_for(self._answers.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _send(self, publisher: Publisher, indexes: list[int]) -> None:
        acks = []
        for index in indexes:
            data = self.file.read_chunk(index)
            acks.append(self._publish_nowait(publisher, self.topics["chunk"].format(index=index), data))
            self.outcome.chunks_sent += 1
            self.outcome.bytes_sent += len(data)
            if len(acks) >= 20:  # a window: the file is never all in memory
                await _all_acked(acks)
                acks = []
        await _all_acked(acks)

    async def _publish(self, publisher: Publisher, topic: str, payload: bytes) -> None:
        await _all_acked([self._publish_nowait(publisher, topic, payload)])

    @staticmethod
    def _publish_nowait(publisher: Publisher, topic: str, payload: bytes) -> asyncio.Future[bool]:
        fut = publisher.publish(topic, payload, 1)
        if fut is None:
            raise SimConnectError(f"not connected: cannot publish to {topic}")
        return fut


async def _all_acked(futures: list[asyncio.Future[bool]]) -> None:
    if not futures:
        return
    try:
        results = await asyncio.wait_for(asyncio.gather(*futures), ACK_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise SimConnectError(f"the broker did not acknowledge {len(futures)} message(s) within "
                              f"{ACK_TIMEOUT_S:g} s") from None
    if not all(results):
        raise SimConnectError("the broker refused a publish")
