"""The buffer's in-memory order and lease state (pure: no disk, no I/O).

Per lane, every record the store holds, in sequence order (the send order), with the running byte
and reading totals. The ledger is the one owner of two facts:

- **in flight**: a record handed out by :meth:`Ledger.take` is *leased* until it is released or
  removed; leased records are never handed out again, dropped or expired;
- **replay**: a record is *live* from its append until it is first taken (or until a connection
  comes up: :meth:`Ledger.mark_backlog`); everything else is backlog and is sent with the replay
  flag. A release makes a record backlog.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bridge.uplink.store import LANES, Lane, Source


@dataclass
class Entry:
    key: str
    seq: int
    topic: str
    readings: int
    created_ms: int
    size: int
    replay: bool


@dataclass(frozen=True)
class _Lease:
    lane: Lane
    replay: bool  # taken from the backlog
    since: float  # monotonic time it was taken


class Ledger:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[Lane, OrderedDict[str, Entry]] = {lane: OrderedDict() for lane in LANES}
        # live records (never taken since they were written or the connection came up), in order
        self._live: dict[Lane, OrderedDict[str, None]] = {lane: OrderedDict() for lane in LANES}
        self._leases: dict[str, _Lease] = {}  # in take order: the first one is the oldest
        self._leased: dict[tuple[Lane, bool], int] = {(lane, replay): 0 for lane in LANES for replay in (False, True)}
        self._bytes: dict[Lane, int] = dict.fromkeys(LANES, 0)
        self._readings: dict[Lane, int] = dict.fromkeys(LANES, 0)
        self._next_seq: dict[Lane, int] = dict.fromkeys(LANES, 1)

    # ------------------------------------------------------------------ sequence numbers

    def next_seq(self, lane: Lane) -> int:
        return self._next_seq[lane]

    def start_seq(self, lane: Lane, seq: int) -> None:
        """On open: the next number to hand out (one past everything known used or reserved)."""
        self._next_seq[lane] = seq

    # ------------------------------------------------------------------ records

    def add(self, lane: Lane, entry: Entry) -> None:
        """Append a record (a sequence number past every other): live unless flagged replay."""
        self._entries[lane][entry.key] = entry
        self._bytes[lane] += entry.size
        self._readings[lane] += entry.readings
        self._next_seq[lane] = max(self._next_seq[lane], entry.seq + 1)
        if not entry.replay:
            self._live[lane][entry.key] = None

    def find(self, key: str) -> tuple[Lane, Entry] | None:
        for lane in LANES:
            entry = self._entries[lane].get(key)
            if entry is not None:
                return lane, entry
        return None

    def remove(self, lane: Lane, key: str) -> Entry | None:
        entry = self._entries[lane].pop(key, None)
        if entry is None:
            return None
        self._bytes[lane] -= entry.size
        self._readings[lane] -= entry.readings
        self._live[lane].pop(key, None)
        self._end_lease(key)
        return entry

    def entries(self, lane: Lane) -> Iterator[Entry]:
        """The lane's records in order, leased or not (copy first to remove while iterating)."""
        return iter(self._entries[lane].values())

    def oldest_free(self, lane: Lane, skip: Callable[[str], bool] = lambda key: False) -> Entry | None:
        """The oldest record of ``lane`` that is not leased (nor skipped)."""
        return next((e for k, e in self._entries[lane].items() if k not in self._leases and not skip(k)), None)

    # ------------------------------------------------------------------ leases and replay

    def candidates(self, lane: Lane, limit: int, source: Source = "any") -> list[Entry]:
        """Up to ``limit`` oldest records not leased: of any kind, only ``live`` ones or only
        ``backlog`` ones (in order; lease the ones actually handed out with :meth:`lease`)."""
        entries, live = self._entries[lane], self._live[lane]
        out: list[Entry] = []
        for key in live if source == "live" else entries:
            if len(out) >= limit:
                break
            if key not in self._leases and not (source == "backlog" and key in live):
                out.append(entries[key])
        return out

    def lease(self, lane: Lane, entry: Entry) -> bool:
        """Lease one record; once sent, it is no longer live (a resend is a replay)."""
        if entry.key in self._leases or entry.key not in self._entries[lane]:
            return False
        self._leases[entry.key] = _Lease(lane, entry.replay, self._clock())
        self._leased[lane, entry.replay] += 1
        self._live[lane].pop(entry.key, None)
        return True

    def release(self, key: str) -> None:
        """The record is available again, keeps its place, and is backlog from now on."""
        if self._end_lease(key):
            found = self.find(key)
            if found is not None:
                found[1].replay = True

    def release_all(self) -> int:
        keys = list(self._leases)
        for key in keys:
            self.release(key)
        return len(keys)

    def _end_lease(self, key: str) -> bool:
        lease = self._leases.pop(key, None)
        if lease is None:
            return False
        self._leased[lease.lane, lease.replay] -= 1
        return True

    def is_leased(self, key: str) -> bool:
        return key in self._leases

    def mark_backlog(self) -> None:
        """Everything waiting is backlog from now on (a connection came up)."""
        for lane in LANES:
            for entry in self._entries[lane].values():
                entry.replay = True
            self._live[lane].clear()

    # ------------------------------------------------------------------ counts

    def depth(self, lane: Lane) -> int:
        return len(self._entries[lane])

    def in_flight(self, lane: Lane, source: Source = "any") -> int:
        live, backlog = self._leased[lane, False], self._leased[lane, True]
        return live if source == "live" else backlog if source == "backlog" else live + backlog

    def available(self, lane: Lane, source: Source = "any") -> int:
        live = len(self._live[lane])  # live records are never leased (taking one ends it)
        if source == "live":
            return live
        waiting = len(self._entries[lane]) - self.in_flight(lane)
        return waiting - live if source == "backlog" else waiting

    def oldest_lease_s(self) -> float:
        oldest = next(iter(self._leases.values()), None)
        return 0.0 if oldest is None else self._clock() - oldest.since

    def bytes_used(self, lane: Lane) -> int:
        return self._bytes[lane]

    def readings(self, lane: Lane) -> int:
        return self._readings[lane]
