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


@dataclass(frozen=True)
class RecordMeta:
    """What the store knows of a record besides its payload (on disk: its key)."""

    lane: Lane
    key: str
    seq: int
    topic: str
    readings: int
    created_ms: int
    size: int  # what it counts against the lane's budget


@dataclass(frozen=True)
class _Lease:
    lane: Lane
    replay: bool  # taken from the backlog
    since: float  # monotonic time it was taken


class Ledger:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[Lane, OrderedDict[str, RecordMeta]] = {lane: OrderedDict() for lane in LANES}
        self._replay: set[str] = set()  # backlog: sent with the replay flag
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

    def add(self, meta: RecordMeta, *, replay: bool) -> None:
        """Append a record (a sequence number past every other of its lane): live, or backlog."""
        lane = meta.lane
        self._entries[lane][meta.key] = meta
        self._bytes[lane] += meta.size
        self._readings[lane] += meta.readings
        self._next_seq[lane] = max(self._next_seq[lane], meta.seq + 1)
        if replay:
            self._replay.add(meta.key)
        else:
            self._live[lane][meta.key] = None

    def find(self, key: str) -> RecordMeta | None:
        for lane in LANES:
            meta = self._entries[lane].get(key)
            if meta is not None:
                return meta
        return None

    def remove(self, meta: RecordMeta) -> None:
        if self._entries[meta.lane].pop(meta.key, None) is None:
            return
        self._bytes[meta.lane] -= meta.size
        self._readings[meta.lane] -= meta.readings
        self._live[meta.lane].pop(meta.key, None)
        self._replay.discard(meta.key)
        self._end_lease(meta.key)

    def is_replay(self, key: str) -> bool:
        return key in self._replay

    def entries(self, lane: Lane) -> Iterator[RecordMeta]:
        """The lane's records in order, leased or not (copy first to remove while iterating)."""
        return iter(self._entries[lane].values())

    def oldest_free(self, lane: Lane, skip: Callable[[str], bool] = lambda key: False) -> RecordMeta | None:
        """The oldest record of ``lane`` that is not leased (nor skipped)."""
        return next((e for k, e in self._entries[lane].items() if k not in self._leases and not skip(k)), None)

    # ------------------------------------------------------------------ leases and replay

    def candidates(self, lane: Lane, limit: int, source: Source = "any") -> list[RecordMeta]:
        """Up to ``limit`` oldest records not leased: of any kind, only ``live`` ones or only
        ``backlog`` ones (in order; lease the ones actually handed out with :meth:`lease`)."""
        entries, live = self._entries[lane], self._live[lane]
        out: list[RecordMeta] = []
        for key in live if source == "live" else entries:
            if len(out) >= limit:
                break
            if key not in self._leases and not (source == "backlog" and key in live):
                out.append(entries[key])
        return out

    def lease(self, meta: RecordMeta) -> bool:
        """Lease one record; once sent, it is no longer live (a resend is a replay)."""
        key, lane = meta.key, meta.lane
        if key in self._leases or key not in self._entries[lane]:
            return False
        replay = key in self._replay
        self._leases[key] = _Lease(lane, replay, self._clock())
        self._leased[lane, replay] += 1
        self._live[lane].pop(key, None)
        return True

    def release(self, key: str) -> None:
        """The record is available again, keeps its place, and is backlog from now on."""
        if self._end_lease(key):
            self._replay.add(key)

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
            self._replay.update(self._entries[lane])
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
