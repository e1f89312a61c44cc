"""The gateway's status snapshot: accounting, buffer, link and rejection figures in one dict,
published periodically on ``edge/{gw}/stats``, shown by the lab, and handed to other threads
(the Prometheus endpoint) through a :class:`SnapshotBoard`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

Snapshot = Callable[[], dict[str, Any]]
FrozenSnapshot = Mapping[str, Any]


def freeze(value: Any) -> Any:
    """A deep read-only copy: dicts become mapping proxies of new dicts, lists and tuples tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


class SnapshotBoard:
    """The latest snapshot, for readers on other threads.

    The snapshot is built on the event loop (the only thread that touches the gateway's state),
    frozen, and swapped in with one reference assignment, so a reader on another thread always
    sees one whole, consistent snapshot and never a loop-owned object. ``ts`` is when it was built
    (epoch seconds).
    """

    def __init__(self) -> None:
        self._latest: tuple[float, FrozenSnapshot] | None = None
        self._refreshed = 0.0  # time.monotonic() of the last refresh (immune to wall-clock steps)

    def refresh(self, snapshot: Snapshot) -> None:
        """On the event loop: build a new snapshot and publish it."""
        self._latest = (time.time(), freeze(snapshot()))
        self._refreshed = time.monotonic()

    def age_s(self) -> float | None:
        """From any thread: seconds since the last refresh, None before the first one."""
        return None if self._latest is None else time.monotonic() - self._refreshed

    def latest(self) -> tuple[float, FrozenSnapshot] | None:
        """From any thread: ``(ts, snapshot)``, or None before the first refresh."""
        return self._latest


async def refresh_periodically(board: SnapshotBoard, snapshot: Snapshot, interval_s: float,
                               stop: asyncio.Event) -> None:
    """Refresh ``board`` every ``interval_s`` until ``stop`` (and once more on the way out)."""
    while True:
        board.refresh(snapshot)
        if stop.is_set():
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def publish_periodically(
    snapshot: Snapshot,
    publish: Callable[[bytes], Awaitable[bool]],
    interval_s: float,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except asyncio.TimeoutError:
            doc = {"ts_ms": int(time.time() * 1000), **snapshot()}
            await publish(json.dumps(doc, separators=(",", ":")).encode())
