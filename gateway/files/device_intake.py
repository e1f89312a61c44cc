"""Device file uploads between the local broker and the disk: the topic test ingest runs on every
message, a bounded queue, and one worker that handles the queued messages in order.

:meth:`DeviceIntake.route` wraps ingest's ``offer``: a message whose topic holds the file topics'
literal level (``/files/`` by default: one substring search) and matches a file pattern is
queued here instead, so file chunks never reach the telemetry decoder; every other message goes
to ingest as before. The queue is bounded in messages and bytes; a message that does not fit is
dropped and counted (``overflow``): the device learns what is missing when it asks again.

The worker (:meth:`DeviceIntake.run`) hands each message to :class:`DeviceReceiver` in a thread
(chunks are written and synced to disk: the event loop must not wait for that), publishes the
answers through the local broker (QoS 1, never retained), and expires idle uploads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.mqtt.errors import BridgeError
from gateway.errors import GatewayError
from gateway.files.device_contract import DeviceFileTopics, FileMessage
from gateway.files.device_receiver import OVERFLOW, DeviceReceiver

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
Offer = Callable[[str, bytes], None]
MAX_QUEUED = 1000
MAX_QUEUED_BYTES = 32 * 1024 * 1024


class DeviceIntake:
    """The queue and the worker in front of a :class:`DeviceReceiver`."""

    def __init__(self, receiver: DeviceReceiver, publish: Publish, *, max_queued: int = MAX_QUEUED,
                 max_queued_bytes: int = MAX_QUEUED_BYTES) -> None:
        self.receiver = receiver
        self.topics: DeviceFileTopics = receiver.topics
        self._publish = publish
        self._queue: deque[tuple[FileMessage, bytes]] = deque()
        self._queued_bytes = 0
        self._max, self._max_bytes = max_queued, max_queued_bytes
        self._wake = asyncio.Event()
        self.internal_errors = 0
        self.answers_failed = 0

    def route(self, offer: Offer) -> Offer:
        """``offer`` with device file messages taken out (see the module doc)."""
        needle, parse, take = self.topics.needle, self.topics.parse, self._take

        def on_message(topic: str, payload: bytes) -> None:
            if needle in topic:
                msg = parse(topic)
                if msg is not None:
                    take(msg, payload)
                    return
            offer(topic, payload)

        return on_message

    def _take(self, msg: FileMessage, payload: bytes) -> None:
        if len(self._queue) >= self._max or self._queued_bytes + len(payload) > self._max_bytes:
            self.receiver.rejected[OVERFLOW] += 1
            return
        self._queue.append((msg, payload))
        self._queued_bytes += len(payload)
        self._wake.set()

    def __len__(self) -> int:
        return len(self._queue)

    def counts(self) -> dict[str, Any]:
        """The figures of the stats document's ``device_files`` block."""
        r = self.receiver
        return {"files": r.files, "chunks": r.chunks, "bytes": r.bytes, "duplicates": r.duplicates,
                "under_way": r.under_way, "queued": len(self._queue), "rejected": dict(r.rejected),
                "answers_failed": self.answers_failed, "internal_errors": self.internal_errors}

    async def run(self, stop: asyncio.Event) -> None:
        """Handle queued messages until ``stop``; what is still queued then is left (the devices ask again)."""
        await self._step(self._load)
        every = min(60.0, self.receiver.limits.timeout_s / 4)
        next_expiry = time.monotonic() + every
        while not stop.is_set():
            if not self._queue:
                await _either(self._wake, stop, max(0.0, next_expiry - time.monotonic()))
                self._wake.clear()
            if self._queue and not stop.is_set():
                msg, payload = self._queue.popleft()
                self._queued_bytes -= len(payload)
                await self._step(self._handle, msg, payload)
            if time.monotonic() >= next_expiry:
                next_expiry = time.monotonic() + every
                await self._step(self._expire)

    async def _handle(self, msg: FileMessage, payload: bytes) -> None:
        for topic, answer in await asyncio.to_thread(self.receiver.handle, msg, payload):
            try:
                await self._publish(topic, answer)
            except (GatewayError, BridgeError) as exc:
                self.answers_failed += 1
                log.warning("device file status to %s not published: %s", topic[:120], exc)

    async def _load(self) -> None:
        await asyncio.to_thread(self.receiver.load)
        if self.receiver.under_way:
            log.info("%d device upload(s) under way found on disk", self.receiver.under_way)

    async def _expire(self) -> None:
        expired = await asyncio.to_thread(self.receiver.expire)
        if expired:
            log.info("dropped %d idle device upload(s)", expired)

    async def _step(self, step: Callable[..., Awaitable[None]], *args: object) -> None:
        """The worker's single guard: an unexpected error costs this message only (counted, logged)."""
        try:
            await step(*args)
        except Exception:
            self.internal_errors += 1
            log.exception("internal error in device file intake")


async def _either(event: asyncio.Event, stop: asyncio.Event, timeout: float) -> None:
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await w
