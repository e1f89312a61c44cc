"""Helpers for the download tests: files to push, a foreign pusher (plain paho) that also records the
gateway's FileStatus answers, and a watcher asserting that the inbox never shows a partial file."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from pathlib import Path
from typing import Any

from bridge.protocol.file_topics import FileTopics
from bridge.protocol.files import Manifest, encode_chunk, encode_manifest, new_file_id
from bridge.protocol.records import decode_control
from bridge.transfer.plan import read_chunk
from tests.support import RecordingClient, eventually

PREFIX = "edge/gw-test"
TOPICS = FileTopics(PREFIX)
STATUS_TOPIC = f"{PREFIX}/files/status"


def make_file(directory: Path, name: str, size: int, seed: int = 1) -> Path:
    path = directory / name
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ForeignPusher:
    """A plain paho client on the cloud broker (MQTT 3.1.1): publishes manifests and chunks as it is
    told, good or bad, and records the gateway's FileStatus records."""

    def __init__(self, client: RecordingClient) -> None:
        self.client = client

    @classmethod
    async def connect(cls, port: int) -> ForeignPusher:
        client = await RecordingClient(port, "test-foreign-pusher").start().connected()
        await client.subscribe(STATUS_TOPIC)
        return cls(client)

    def statuses(self, file_id: str) -> list[dict[str, Any]]:
        records = [decode_control(p) for p in self.client.on(STATUS_TOPIC)]
        return [r for r in records if r.get("id") == file_id and r.get("direction") == "down"]

    async def status(self, file_id: str, state: str, count: int = 1, timeout: float = 15) -> dict[str, Any]:
        """The ``count``-th status ``state`` about ``file_id`` (waits for it)."""
        def found() -> list[dict[str, Any]]:
            return [s for s in self.statuses(file_id) if s["state"] == state]

        await eventually(lambda: len(found()) >= count, timeout=timeout,
                         message=lambda: f"no status #{count} {state} for {file_id}: {self.statuses(file_id)}")
        return found()[count - 1]

    def manifest(self, manifest: Manifest, **changes: Any) -> None:
        """Publish ``manifest`` (with ``changes`` to its JSON, e.g. a hostile name)."""
        payload = encode_manifest(manifest) if not changes else json.dumps({**manifest.to_json(), **changes}).encode()
        self.client.send(TOPICS.manifest("down", manifest.id), payload)

    def chunk(self, path: Path, manifest: Manifest, index: int, *, data: bytes | None = None,
              digest: bytes | None = None) -> None:
        """Publish chunk ``index`` of ``path``; ``data`` replaces its bytes (``digest``: the header's
        SHA-256, by default that of the data sent)."""
        good, good_digest = read_chunk(path, manifest, index)
        body = good if data is None else data
        payload = encode_chunk(manifest.id, index, index * manifest.chunk_size, body,
                               sha256=digest if digest is not None else (good_digest if data is None else None))
        self.client.send(TOPICS.chunk("down", manifest.id), payload)

    async def until_listening(self) -> None:
        """The gateway subscribes once connected: probe with a chunk of an unknown file until it answers
        (``missing`` with ``manifest: true``)."""
        for _ in range(100):
            probe = new_file_id()
            self.client.send(TOPICS.chunk("down", probe), encode_chunk(probe, 0, 0, b"probe"))
            try:
                await self.status(probe, "missing", timeout=0.3)
                return
            except AssertionError:
                continue
        raise AssertionError("the gateway never answered a probe chunk")

    async def close(self) -> None:
        await asyncio.to_thread(self.client.stop)


class InboxWatch:
    """Polls the inbox while a test runs: every file ever seen there must be whole (its SHA-256 one
    of ``expected``). ``seen`` maps each relative path to the hashes it showed."""

    def __init__(self, inbox: Path, expected: set[str]) -> None:
        self.inbox, self.expected = inbox, expected
        self.seen: dict[str, set[str]] = {}
        self._task: asyncio.Task[None] | None = None
        self.looks = 0

    def look(self) -> None:
        self.looks += 1
        if not self.inbox.exists():
            return
        for path in self.inbox.rglob("*"):
            if path.is_file():
                self.seen.setdefault(path.relative_to(self.inbox).as_posix(), set()).add(sha256(path))

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self.look)
            await asyncio.sleep(0.005)

    def __enter__(self) -> InboxWatch:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.look()
        bad = {p: h - self.expected for p, h in self.seen.items() if h - self.expected}
        assert not bad, f"the inbox showed files that are not whole: {bad}"
        assert self.looks > 1
