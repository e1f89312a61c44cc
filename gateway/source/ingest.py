"""Ingest: the bounded hand-off between the local broker and the pipeline.

The broker side calls :meth:`Ingest.offer` without ever blocking (it runs inside amqtt's hook or
paho's callback); the pipeline drains in chunks. A full queue drops the new message and counts
it as ``ingest_overflow``: memory stays bounded and nothing is lost silently.

Control messages (device events and command responses, told apart by ``is_control(topic)``) go to
a second queue with its own bound, which :meth:`Ingest.drain` empties first: they never wait behind
queued telemetry, and a telemetry flood cannot make them overflow.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class Ingest:
    def __init__(self, max_messages: int, on_overflow: Callable[[str], None],
                 is_control: Callable[[str], bool] | None = None) -> None:
        self._queue: deque[tuple[str, bytes, int]] = deque()
        self._control: deque[tuple[str, bytes, int]] = deque()
        self._is_control = is_control
        self._max = max_messages
        self._on_overflow = on_overflow
        self._waiter: asyncio.Future[None] | None = None
        self._pause: asyncio.Future[None] | None = None
        self.high_water = 0

    def offer(self, topic: str, payload: bytes) -> None:
        queue = self._control if self._is_control is not None and self._is_control(topic) else self._queue
        if len(queue) >= self._max:
            self._on_overflow(topic)
            return
        queue.append((topic, payload, int(time.time() * 1000)))
        self.high_water = max(self.high_water, len(queue))
        for waiter in (self._waiter, self._pause if queue is self._control else None):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def __len__(self) -> int:
        return len(self._queue) + len(self._control)

    async def wait(self, timeout: float | None) -> None:
        """Wait until messages are queued (or the timeout passes)."""
        if self._queue or self._control:
            return
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _wake, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def pause(self, seconds: float) -> None:
        """Let telemetry gather for ``seconds`` (fewer wake-ups), but end at once when a control
        message (event, command response) arrives: those must not wait."""
        if self._control:
            return
        loop = asyncio.get_running_loop()
        self._pause = pause = loop.create_future()
        timer = loop.call_later(seconds, _wake, pause)
        try:
            await pause
        finally:
            self._pause = None
            timer.cancel()

    def drain(self, limit: int) -> list[tuple[str, bytes, int]]:
        """Up to ``limit`` messages, control messages first."""
        out: list[tuple[str, bytes, int]] = []
        for q in (self._control, self._queue):
            while q and len(out) < limit:
                out.append(q.popleft())
        return out


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
