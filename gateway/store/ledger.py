"""The buffer's order, counters, lease state and replay flag, in bounded memory.

Per lane the ledger keeps counters (records, bytes, readings, the next sequence number) and the
metadata of a bounded set of records: a *head* window of the oldest ones (what the forwarder sends
next), refilled from the disk in sequence order, and a *tail* of the newest ones (recent appends,
kept until they are on disk). Between them lies a *gap*, a range of sequence numbers whose records
are only on disk; it is read through ``pager`` when needed. So memory does not grow with the backlog.

The ledger is the one owner of two facts:

- **in flight**: a record handed out by :meth:`Ledger.take` is *leased* until it is released or
  removed; leased records are never handed out again, dropped or expired;
- **replay**: a record is *live* from its append until it is first taken (or until a connection
  comes up: :meth:`Ledger.mark_backlog`); everything else is backlog and is sent with the replay
  flag. Kept as a per-lane watermark (records below it are backlog) plus the records released
  since the watermark was set.

After :meth:`Ledger.open_lane` the records that were on disk are counted by :meth:`Ledger.scan`, in
chunks; until it is done the counters cover only what it has counted (and everything loaded into
memory or appended since), so they grow while records are found and the two always agree.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bridge.uplink.store import LANES, Lane, Source

WINDOW = 256  # records per lane kept in memory beyond those in flight: the head, and the tail
_PAGE = 512  # records read from the disk at a time when walking the gap


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


# pager(lane, first_seq, last_seq, limit): the records on disk with first_seq <= seq <= last_seq, in order
Pager = Callable[[Lane, int, int, int], list[RecordMeta]]
# lookup(key): the record of ``key`` if it is on disk
Lookup = Callable[[str], "RecordMeta | None"]


@dataclass(frozen=True)
class _Lease:
    meta: RecordMeta
    replay: bool  # taken from the backlog
    since: float  # monotonic time it was taken


@dataclass
class _Lane:
    head: OrderedDict[str, RecordMeta] = field(default_factory=OrderedDict)  # the oldest records, in order
    tail: OrderedDict[str, RecordMeta] = field(default_factory=OrderedDict)  # after the gap, in order
    gap: tuple[int, int] = (1, 0)  # seqs whose records are on disk only (none when first > last)
    scan: tuple[int, int] = (1, 0)  # seqs on disk at open, not counted yet
    early: set[str] = field(default_factory=set)  # in the scan's range, but counted (taken or dropped) already
    records: int = 0
    bytes: int = 0
    readings: int = 0
    restored_readings: int = 0  # counted readings of the records on disk at open
    live: int = 0  # live records not in flight
    watermark: int = 1  # records below it are backlog
    next_seq: int = 1

    def in_gap(self, seq: int) -> bool:
        return self.gap[0] <= seq <= self.gap[1]

    def counted(self, meta: RecordMeta) -> bool:
        return not self.scan[0] <= meta.seq <= self.scan[1] or meta.key in self.early


class Ledger:
    def __init__(self, pager: Pager, lookup: Lookup, clock: Callable[[], float] = time.monotonic,
                 window: int = WINDOW) -> None:
        self._pager = pager
        self._lookup = lookup
        self._clock = clock
        self._window = max(1, window)
        self._lanes: dict[Lane, _Lane] = {lane: _Lane() for lane in LANES}
        self._released: set[str] = set()  # released since the watermark was set: backlog
        self._leases: dict[str, _Lease] = {}  # in take order: the first one is the oldest
        self._leased: dict[tuple[Lane, bool], int] = {(lane, replay): 0 for lane in LANES for replay in (False, True)}

    # ------------------------------------------------------------------ sequence numbers and opening

    def next_seq(self, lane: Lane) -> int:
        return self._lanes[lane].next_seq

    def open_lane(self, lane: Lane, highest: int, next_seq: int) -> None:
        """On open: the records on disk have sequence numbers up to ``highest``; all are backlog,
        the oldest are loaded now and the rest counted by :meth:`scan`."""
        lane_ = self._lanes[lane]
        lane_.next_seq = lane_.watermark = next_seq
        lane_.gap = lane_.scan = (1, highest)
        self._fill(lane, force=True)

    def scan(self, limit: int) -> bool:
        """Count up to ``limit`` more records found on disk at open; True once all are counted."""
        for lane in LANES:
            lane_ = self._lanes[lane]
            first, last = lane_.scan
            if first > last:
                continue
            found = self._pager(lane, first, last, limit)
            for meta in found:
                if meta.key not in lane_.head and meta.key not in lane_.tail:
                    self._count_found(lane_, meta)
                lane_.early.discard(meta.key)
            lane_.scan = (found[-1].seq + 1 if len(found) == limit else last + 1, last)
            return False
        return True

    @property
    def scanning(self) -> bool:
        return any(lane.scan[0] <= lane.scan[1] for lane in self._lanes.values())

    def restored_readings(self, lane: Lane) -> int:
        return self._lanes[lane].restored_readings

    # ------------------------------------------------------------------ records

    def add(self, meta: RecordMeta) -> None:
        """Append a new record (a sequence number past every other of its lane): live."""
        lane_ = self._lanes[meta.lane]
        (lane_.tail if lane_.gap[0] <= lane_.gap[1] or lane_.tail else lane_.head)[meta.key] = meta
        self._count(lane_, meta, +1)
        lane_.next_seq = max(lane_.next_seq, meta.seq + 1)
        lane_.live += 1

    def trim(self, lane: Lane, pinned: Callable[[str], bool]) -> None:
        """Keep the memory bounded: the oldest records of the tail that are on disk (not
        ``pinned``, not in flight) are forgotten; the gap grows over them."""
        lane_ = self._lanes[lane]
        if not lane_.tail and lane_.gap[0] > lane_.gap[1] and len(lane_.head) > 4 * self._window:
            metas = list(lane_.head.values())[2 * self._window:]
            for meta in metas:
                del lane_.head[meta.key]
                lane_.tail[meta.key] = meta
            lane_.gap = (metas[0].seq, metas[0].seq - 1)
        while len(lane_.tail) > self._window:
            meta = next(iter(lane_.tail.values()))
            if pinned(meta.key) or meta.key in self._leases:
                return
            del lane_.tail[meta.key]
            lane_.gap = (lane_.gap[0], meta.seq)

    def _fill(self, lane: Lane, force: bool = False) -> None:
        """Refill the head from the gap while it holds fewer than ``window`` records not in flight."""
        lane_ = self._lanes[lane]
        first, last = lane_.gap
        if first > last:
            if lane_.tail:  # the gap is gone: head and tail are one run again
                lane_.head.update(lane_.tail)
                lane_.tail.clear()
            return
        want = 2 * self._window + len(self._leases) - len(lane_.head)
        if not force and len(lane_.head) - len(self._leases) >= self._window:
            return
        found = self._pager(lane, first, last, max(want, 1))
        for meta in found:
            self._count_found(lane_, meta)
            lane_.early.discard(meta.key)
            lane_.head[meta.key] = meta
        if found and lane_.scan[0] <= found[-1].seq:
            lane_.scan = (found[-1].seq + 1, lane_.scan[1])
        lane_.gap = (found[-1].seq + 1 if len(found) >= want else last + 1, last)
        if lane_.gap[0] > lane_.gap[1]:
            self._fill(lane)

    def _count_found(self, lane_: _Lane, meta: RecordMeta) -> None:
        """Count a record found on disk at open, unless that is done already."""
        if not lane_.counted(meta):
            self._count(lane_, meta, +1, restored=True)
            lane_.early.add(meta.key)

    def _count(self, lane_: _Lane, meta: RecordMeta, sign: int, restored: bool = False) -> None:
        lane_.records += sign
        lane_.bytes += sign * meta.size
        lane_.readings += sign * meta.readings
        if restored:
            lane_.restored_readings += meta.readings

    def find(self, key: str) -> RecordMeta | None:
        lease = self._leases.get(key)
        if lease is not None:
            return lease.meta
        for lane_ in self._lanes.values():
            meta = lane_.head.get(key) or lane_.tail.get(key)
            if meta is not None:
                return meta
        meta = self._lookup(key)
        return meta if meta is not None and self._lanes[meta.lane].in_gap(meta.seq) else None

    def remove(self, meta: RecordMeta) -> None:
        lane_ = self._lanes[meta.lane]
        in_memory = lane_.head.pop(meta.key, None) or lane_.tail.pop(meta.key, None)
        if in_memory is None and meta.key not in self._leases and not lane_.in_gap(meta.seq):
            return
        if self._is_live(meta):
            lane_.live -= 1
        if in_memory is None:  # a record in the gap, maybe not counted yet: it is, before it leaves
            self._count_found(lane_, meta)
        self._count(lane_, meta, -1)
        lane_.early.discard(meta.key)
        self._released.discard(meta.key)
        self._end_lease(meta.key)

    def _is_live(self, meta: RecordMeta) -> bool:
        return (meta.seq >= self._lanes[meta.lane].watermark and meta.key not in self._released
                and meta.key not in self._leases)

    def is_replay(self, key: str, seq: int, lane: Lane) -> bool:
        return seq < self._lanes[lane].watermark or key in self._released

    def entries(self, lane: Lane, first: int = 0) -> Iterator[RecordMeta]:
        """The lane's records in order from sequence number ``first``, leased or not (the gap is
        read from disk as the walk reaches it; removing records while walking is fine)."""
        self._fill(lane)
        lane_ = self._lanes[lane]
        yield from [meta for meta in list(lane_.head.values()) if meta.seq >= first]
        tail = list(lane_.tail.values())
        position, last = max(first, lane_.gap[0]), lane_.gap[1]
        while position <= last:
            page = self._pager(lane, position, last, _PAGE)
            yield from page
            position = page[-1].seq + 1 if len(page) == _PAGE else last + 1
        yield from [meta for meta in tail if meta.seq >= first]

    def oldest_free(self, lane: Lane, skip: Callable[[str], bool] = lambda key: False) -> RecordMeta | None:
        """The oldest record of ``lane`` that is not leased (nor skipped)."""
        return next((m for m in self.entries(lane) if m.key not in self._leases and not skip(m.key)), None)

    # ------------------------------------------------------------------ leases and replay

    def candidates(self, lane: Lane, limit: int, source: Source = "any") -> list[RecordMeta]:
        """Up to ``limit`` oldest records not leased: of any kind, only ``live`` ones or only
        ``backlog`` ones (in order; lease the ones actually handed out with :meth:`lease`)."""
        if limit <= 0 or (source == "live" and self._lanes[lane].live == 0):
            return []
        out: list[RecordMeta] = []
        first = self._lanes[lane].watermark if source == "live" else 0
        for meta in self.entries(lane, first):
            if len(out) >= limit:
                break
            if meta.key in self._leases:
                continue
            live = self._is_live(meta)
            if source == "any" or (source == "live") == live:
                out.append(meta)
        return out

    def lease(self, meta: RecordMeta) -> bool:
        """Lease one record; once sent, it is no longer live (a resend is a replay)."""
        key, lane_ = meta.key, self._lanes[meta.lane]
        if key in self._leases:
            return False
        if self._is_live(meta):
            lane_.live -= 1
        if key not in lane_.head and key not in lane_.tail:
            self._count_found(lane_, meta)
        replay = self.is_replay(key, meta.seq, meta.lane)
        self._leases[key] = _Lease(meta, replay, self._clock())
        self._leased[meta.lane, replay] += 1
        return True

    def release(self, key: str) -> None:
        """The record is available again, keeps its place, and is backlog from now on."""
        lease = self._leases.get(key)
        if (lease is not None and self._end_lease(key)
                and lease.meta.seq >= self._lanes[lease.meta.lane].watermark):
            self._released.add(key)

    def release_all(self) -> int:
        keys = list(self._leases)
        for key in keys:
            self.release(key)
        return len(keys)

    def _end_lease(self, key: str) -> bool:
        lease = self._leases.pop(key, None)
        if lease is None:
            return False
        self._leased[lease.meta.lane, lease.replay] -= 1
        return True

    def is_leased(self, key: str) -> bool:
        return key in self._leases

    def mark_backlog(self) -> None:
        """Everything waiting is backlog from now on (a connection came up)."""
        for lane_ in self._lanes.values():
            lane_.watermark, lane_.live = lane_.next_seq, 0
        self._released.clear()

    # ------------------------------------------------------------------ counts

    def depth(self, lane: Lane) -> int:
        return self._lanes[lane].records

    def in_flight(self, lane: Lane, source: Source = "any") -> int:
        live, backlog = self._leased[lane, False], self._leased[lane, True]
        return live if source == "live" else backlog if source == "backlog" else live + backlog

    def available(self, lane: Lane, source: Source = "any") -> int:
        live = self._lanes[lane].live  # live records are never leased (taking one ends it)
        if source == "live":
            return live
        waiting = self._lanes[lane].records - self.in_flight(lane)
        return waiting - live if source == "backlog" else waiting

    def oldest_lease_s(self) -> float:
        oldest = next(iter(self._leases.values()), None)
        return 0.0 if oldest is None else self._clock() - oldest.since

    def in_memory(self) -> int:
        """Records whose metadata is held in memory (the windows and the leases), all lanes."""
        keys = set(self._leases)
        for lane_ in self._lanes.values():
            keys.update(lane_.head, lane_.tail)
        return len(keys)

    def bytes_used(self, lane: Lane) -> int:
        return self._lanes[lane].bytes

    def readings(self, lane: Lane) -> int:
        return self._lanes[lane].readings
