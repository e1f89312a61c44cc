"""The backlog found at open is counted on the event loop without taking it over: the count pauses
after each step at least as long as the step took, so other tasks (devices connecting, ingest,
control) always have at least half of the loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bridge.uplink.store import Lane
from gateway.store.buffer import Budget, DiskBuffer
from gateway.store.scan import STEP, count_backlog

BUDGETS: dict[Lane, Budget] = {"telemetry": Budget(1 << 30), "control": Budget(1 << 30)}
RECORDS = 20 * STEP


class TimedBuffer(DiskBuffer):
    """A buffer that adds up the time spent in :meth:`scan`."""

    busy_s = 0.0
    steps = 0

    def scan(self, limit: int = STEP, *, enforce: bool = True) -> bool:
        began = time.monotonic()
        try:
            return super().scan(limit, enforce=enforce)
        finally:
            self.busy_s += time.monotonic() - began
            self.steps += 1


def backlog(directory: Path) -> None:
    buf = DiskBuffer(directory, BUDGETS, sync="normal", write_behind_s=3600)
    buf.open()
    buf.set_link_up(True)
    for _ in range(RECORDS):
        buf.append("telemetry", "edge/gw/telemetry", lambda seq: b"x" * 100, 3)
    buf.set_link_up(False)
    buf.close()


async def test_the_count_leaves_at_least_half_of_the_loop_to_other_tasks(tmp_path: Path) -> None:
    backlog(tmp_path)
    buf = TimedBuffer(tmp_path, BUDGETS)
    buf.open(scan=False)
    try:
        assert buf.depth("telemetry") < RECORDS  # only the oldest are known after open
        ticks = 0

        async def other_task() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        other = asyncio.create_task(other_task())
        began = time.monotonic()
        await count_backlog(buf, asyncio.Event())
        wall_s = time.monotonic() - began
        other.cancel()
        assert buf.depth("telemetry") == RECORDS and buf.restored_readings == 3 * RECORDS
        assert buf.steps >= 5
        assert buf.busy_s <= 0.6 * wall_s  # the rest of the time the loop was free
        assert ticks >= buf.steps  # the other task ran between every two steps
    finally:
        buf.close()


async def test_the_count_stops_when_asked(tmp_path: Path) -> None:
    backlog(tmp_path)
    buf = DiskBuffer(tmp_path, BUDGETS)
    buf.open(scan=False)
    stop = asyncio.Event()
    stop.set()
    try:
        await count_backlog(buf, stop)
        assert buf.depth("telemetry") < RECORDS
    finally:
        buf.close()
