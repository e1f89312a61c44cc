"""The processing loop: drain the ingest queue through the pipeline, close batches on age, expire
old buffer records. One long-lived task; on stop it drains what was queued and flushes the open
batch to disk before returning (SIGTERM loses nothing).

Each chunk starts with the queued control messages (events, command responses; see
:class:`gateway.source.ingest.Ingest`), so a telemetry backlog in the queue does not delay them. Messages
are offered on this same event loop, so none arrive while a chunk is being processed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.observe.accounting import INTERNAL_ERROR, Accounting
from gateway.process.clock import ClockGuard
from gateway.process.pipeline import Pipeline
from gateway.source.ingest import Ingest
from gateway.store.lanes import LaneWriter

log = logging.getLogger(__name__)

CHUNK = 500
TICK_S = 0.05
# After a wake-up, let messages gather for this long before the next one: one loop wake-up per
# message would cost more than processing the message (telemetry is batched anyway).
COALESCE_S = 0.002
HOUSEKEEPING_EVERY_S = 1.0


class Processor:
    def __init__(self, ingest: Ingest, pipeline: Pipeline, lanes: LaneWriter, accounting: Accounting,
                 clock: ClockGuard | None = None) -> None:
        self._ingest = ingest
        self._clock = clock
        self._pipeline = pipeline
        self._lanes = lanes
        self._acc = accounting
        self.internal_errors = 0

    def _guarded(self, step: Callable[..., None], *args: Any) -> bool:
        """Run one step (one message, a tick, an expiry pass, the final flush). The loop's single
        guard: an unexpected error costs that step only, and is counted and logged; readings the
        step had taken in but not yet placed anywhere are dropped as ``internal_error``, so the
        accounting identity holds. False if it failed."""
        try:
            step(*args)
        except Exception:
            self.internal_errors += 1
            log.exception("internal error in %s", getattr(step, "__name__", step))
            unplaced = self._acc.balance()
            if unplaced > 0:
                self._acc.drop(INTERNAL_ERROR, unplaced)
            return False
        return True

    def _drain_once(self) -> int:
        items = self._ingest.drain(CHUNK)
        handle = self._pipeline.handle
        acc = self._acc
        for topic, payload, recv_ms in items:
            readings_before = acc.readings_in
            if not self._guarded(handle, topic, payload, recv_ms) and acc.readings_in == readings_before:
                # it failed before counting any reading: the message counts as one, dropped
                acc.readings_in += 1
                acc.drop(INTERNAL_ERROR)
        return len(items)

    async def run(self, stop: asyncio.Event) -> None:
        next_housekeeping = time.monotonic() + HOUSEKEEPING_EVERY_S
        while not stop.is_set():
            await self._ingest.wait(TICK_S)
            while self._drain_once():  # noqa: ASYNC110 - yield to the broker and uplink between chunks
                await asyncio.sleep(0)
            self._guarded(self._pipeline.tick)
            await self._ingest.pause(COALESCE_S)
            if time.monotonic() >= next_housekeeping:
                next_housekeeping = time.monotonic() + HOUSEKEEPING_EVERY_S
                self._guarded(self._lanes.housekeeping)
                if self._clock is not None:
                    self._guarded(self._clock.refresh)
        while self._drain_once():
            pass
        self._guarded(self._pipeline.flush)
        self._guarded(self._lanes.retry_held)
