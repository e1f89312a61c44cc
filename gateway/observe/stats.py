"""Where the gateway's snapshot goes: published periodically on ``edge/{gw}/stats`` as JSON, and
handed to other threads (the Prometheus endpoint) through a :class:`SnapshotBoard`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.observe.snapshot import Snapshot

Build = Callable[[], Snapshot]


class SnapshotBoard:
    """The latest snapshot, for readers on other threads.

    The snapshot is built on the event loop (the only thread that touches the gateway's state) from
    copies in frozen dataclasses (:mod:`gateway.observe.snapshot`), and swapped in with one reference
    assignment, so a reader on another thread always sees one whole, consistent snapshot and never a
    loop-owned object. ``ts`` is when it was built
    (epoch seconds).
    """

    def __init__(self) -> None:
        self._latest: tuple[float, Snapshot] | None = None
        self._refreshed = 0.0  # time.monotonic() of the last refresh (immune to wall-clock steps)

    def refresh(self, build: Build) -> None:
        """On the event loop: build a new snapshot and publish it."""
        self._latest = (time.time(), build())
        self._refreshed = time.monotonic()

    def age_s(self) -> float | None:
        """From any thread: seconds since the last refresh, None before the first one."""
        return None if self._latest is None else time.monotonic() - self._refreshed

    def latest(self) -> tuple[float, Snapshot] | None:
        """From any thread: ``(ts, snapshot)``, or None before the first refresh."""
        return self._latest


async def refresh_periodically(board: SnapshotBoard, build: Build, interval_s: float,
                               stop: asyncio.Event) -> None:
    """Refresh ``board`` every ``interval_s`` until ``stop`` (and once more on the way out)."""
    while True:
        board.refresh(build)
        if stop.is_set():
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def publish_periodically(
    document: Callable[[], dict[str, Any]],
    publish: Callable[[bytes], Awaitable[bool]],
    interval_s: float,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except asyncio.TimeoutError:
            doc = {"ts_ms": int(time.time() * 1000), **document()}
            await publish(json.dumps(doc, separators=(",", ":")).encode())
