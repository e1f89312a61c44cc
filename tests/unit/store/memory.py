"""An in-memory RecordStore: the store's promised behaviour written as plainly as possible, with
no code shared with the disk buffer. The conformance suite runs against it like against the disk
buffer, and the stateful test uses it as the model the disk buffer must agree with.

Reopening (:meth:`MemoryStore.reopen`) keeps what a disk would keep: the records and the sequence
counters; leases end and every record is backlog (replay).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from bridge.uplink.store import LANES, Lane, Record, Source
from gateway.store.buffer import RECORD_OVERHEAD_BYTES, Budget


@dataclass
class _Held:
    record: Record
    size: int
    live: bool
    leased: bool = False
    leased_as_replay: bool = False
    leased_at: float = 0.0


@dataclass
class _Disk:
    held: dict[Lane, list[_Held]] = field(default_factory=lambda: {lane: [] for lane in LANES})
    next_seq: dict[Lane, int] = field(default_factory=lambda: dict.fromkeys(LANES, 1))


class MemoryStore:
    def __init__(self, budgets: dict[Lane, Budget], *, clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 on_dropped: Callable[[Record, str], None] = lambda rec, reason: None,
                 disk: _Disk | None = None) -> None:
        self._budgets = budgets
        self._clock_ms = clock_ms
        self._on_dropped = on_dropped
        self._disk = disk or _Disk()

    def reopen(self) -> MemoryStore:
        for lane in LANES:
            self._disk.held[lane] = [_Held(replace(h.record, replay=True), h.size, live=False)
                                     for h in self._disk.held[lane]]
        return MemoryStore(self._budgets, clock_ms=self._clock_ms, on_dropped=self._on_dropped, disk=self._disk)

    # ------------------------------------------------------------------ the gateway's side

    def next_seq(self, lane: Lane) -> int:
        return self._disk.next_seq[lane]

    def append(self, lane: Lane, topic: str, build: Callable[[int], bytes], readings: int) -> Record:
        seq = self._disk.next_seq[lane]
        payload = build(seq)
        size = len(payload) + len(topic) + RECORD_OVERHEAD_BYTES
        if lane == "telemetry":
            while self.bytes_used(lane) + size > self._budgets[lane].max_bytes and self._drop_oldest(lane):
                pass
        record = Record(f"{lane}/{seq}", lane, seq, topic, payload, readings, self._clock_ms())
        self._disk.held[lane].append(_Held(record, size, live=True))
        self._disk.next_seq[lane] = seq + 1
        return record

    def _drop_oldest(self, lane: Lane) -> bool:
        for held in self._disk.held[lane]:
            if not held.leased:
                self._disk.held[lane].remove(held)
                self._on_dropped(replace(held.record, payload=b""), "overflow")
                return True
        return False

    def expire(self) -> int:
        removed = 0
        for lane in LANES:
            max_age = self._budgets[lane].max_age_s
            if max_age <= 0:
                continue
            cutoff = self._clock_ms() - max_age * 1000
            for held in list(self._disk.held[lane]):
                if held.record.created_ms > cutoff:
                    break
                if not held.leased:
                    self._disk.held[lane].remove(held)
                    self._on_dropped(replace(held.record, payload=b""), "expired")
                    removed += 1
        return removed

    @property
    def control_over_budget(self) -> bool:
        """The control lane holds more than its budget (it is never dropped for capacity)."""
        return self.bytes_used("control") > self._budgets["control"].max_bytes

    def readings(self, lane: Lane) -> int:
        return sum(h.record.readings for h in self._disk.held[lane])

    def bytes_used(self, lane: Lane) -> int:
        return sum(h.size for h in self._disk.held[lane])

    # ------------------------------------------------------------------ RecordStore

    def _matches(self, held: _Held, source: Source) -> bool:
        return not held.leased and (source == "any" or held.live == (source == "live"))

    def take(self, lane: Lane, limit: int, source: Source = "any") -> list[Record]:
        out: list[Record] = []
        for held in self._disk.held[lane]:
            if len(out) < limit and self._matches(held, source):
                held.leased, held.leased_as_replay, held.leased_at = True, held.record.replay, time.monotonic()
                held.live = False
                out.append(held.record)
        return out

    def _find(self, key: str) -> _Held | None:
        return next((h for lane in LANES for h in self._disk.held[lane] if h.record.key == key), None)

    def release(self, key: str) -> None:
        held = self._find(key)
        if held is not None and held.leased:
            held.leased = False
            held.record = replace(held.record, replay=True)

    def release_all(self) -> int:
        leased = [h.record.key for lane in LANES for h in self._disk.held[lane] if h.leased]
        for key in leased:
            self.release(key)
        return len(leased)

    def mark_backlog(self) -> None:
        for lane in LANES:
            for held in self._disk.held[lane]:
                held.live = False
                held.record = replace(held.record, replay=True)

    def ack(self, *keys: str) -> dict[str, Record]:
        out: dict[str, Record] = {}
        for key in keys:
            held = self._find(key)
            if held is not None:
                self._disk.held[held.record.lane].remove(held)
                out[key] = replace(held.record, payload=b"")
        return out

    def depth(self, lane: Lane) -> int:
        return len(self._disk.held[lane])

    def available(self, lane: Lane, source: Source = "any") -> int:
        return sum(1 for h in self._disk.held[lane] if self._matches(h, source))

    def in_flight(self, lane: Lane, source: Source = "any") -> int:
        return sum(1 for h in self._disk.held[lane]
                   if h.leased and (source == "any" or h.leased_as_replay == (source == "backlog")))

    def oldest_lease_s(self) -> float:
        times = [h.leased_at for lane in LANES for h in self._disk.held[lane] if h.leased]
        return time.monotonic() - min(times) if times else 0.0
