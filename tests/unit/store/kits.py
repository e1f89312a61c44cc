"""The RecordStore implementations the conformance suite runs against, each behind one small kit
that opens a store and reopens it (what a restart does)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from bridge.uplink.store import Lane, Record, RecordStore
from gateway.store.buffer import Budget, DiskBuffer
from tests.support import FakeClock
from tests.unit.store.memory import MemoryStore

# "-window": a buffer that keeps a single record per lane in memory, so nearly everything is read
# from disk in pages (the path a large backlog takes)
KINDS = ("memory", "disk", "disk-write-behind", "disk-window", "disk-window-write-behind")


class Store(RecordStore, Protocol):
    """The port plus what the gateway's side of a store offers (and the suite needs)."""

    @property
    def control_over_budget(self) -> bool: ...

    def next_seq(self, lane: Lane) -> int: ...
    def append(self, lane: Lane, topic: str, build: Callable[[int], bytes], readings: int) -> Record: ...
    def expire(self) -> int: ...
    def readings(self, lane: Lane) -> int: ...
    def bytes_used(self, lane: Lane) -> int: ...


EPOCH_MS = 1_700_000_000_000
ClockMs = FakeClock[int]  # wall-clock milliseconds under the test's control (creation times, expiry)


def clock_ms() -> ClockMs:
    return FakeClock(EPOCH_MS)


class Kit:
    def __init__(self, kind: str, directory: Path) -> None:
        assert kind in KINDS
        self.kind = kind
        self._dir = directory
        self._open: list[DiskBuffer] = []
        self._args: tuple[dict[Lane, Budget], ClockMs, Callable[[Record, str], None]] | None = None

    def open(self, budgets: dict[Lane, Budget] | None = None, clock: ClockMs | None = None,
             on_dropped: Callable[[Record, str], None] = lambda rec, reason: None) -> Store:
        self._args = (budgets or {"telemetry": Budget(10**9), "control": Budget(10**9)}, clock or clock_ms(),
                      on_dropped)
        return self._make(None)

    def _make(self, previous: Store | None) -> Store:
        assert self._args is not None
        budgets, clock, on_dropped = self._args
        if self.kind == "memory":
            if isinstance(previous, MemoryStore):
                return previous.reopen()
            return MemoryStore(budgets, clock_ms=clock, on_dropped=on_dropped)
        write_behind = self.kind.endswith("write-behind")
        buf = DiskBuffer(self._dir, budgets, sync="normal", clock_ms=clock, on_dropped=on_dropped,
                         write_behind_s=60 if write_behind else 0, window=1 if "-window" in self.kind else 256)
        buf.open()
        buf.set_link_up(write_behind)
        self._open.append(buf)
        return buf

    def reopen(self, store: Store) -> Store:
        """Stop cleanly and start again on what the store kept."""
        if isinstance(store, DiskBuffer):
            store.close()
        return self._make(store)

    def close(self) -> None:
        for buf in self._open:
            buf.close()
