"""The gateway's status snapshot: accounting, buffer, link and rejection figures in one dict,
published periodically on ``edge/{gw}/stats`` and shown by the lab."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

Snapshot = Callable[[], dict[str, Any]]


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
