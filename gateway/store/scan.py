"""Counting the backlog after start: the records found on disk at open are counted in small steps
on the event loop, once the local broker accepts devices, so start time does not grow with the
backlog. Each step counts :data:`STEP` records (under a millisecond on a small x86 machine); after
each, the count pauses at least as long as the step took, so it never takes more than about half
of the loop's time and devices connecting meanwhile, ingest and control wait at most one step.
Until the count is done the buffer's figures (records, bytes, readings, restored readings) cover
what has been counted, and they grow together, so the accounting identity holds at every moment.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.errors import StorageError
from gateway.store.buffer import DiskBuffer

log = logging.getLogger(__name__)

STEP = 200  # records counted per step
_RETRY_S = 1.0  # after a read error


async def count_backlog(buffer: DiskBuffer, stop: asyncio.Event) -> None:
    """Run :meth:`DiskBuffer.scan` until the backlog is counted (or ``stop`` is set)."""
    started = time.monotonic()
    while buffer.is_open and not stop.is_set():
        step_began = time.monotonic()
        try:
            if buffer.scan(STEP):
                log.info("backlog counted in %.2f s", time.monotonic() - started)
                return
        except StorageError as exc:
            log.error("counting the backlog failed, trying again: %s", exc)
            await asyncio.sleep(_RETRY_S)
        await asyncio.sleep(time.monotonic() - step_began)  # the loop is the others' for as long
