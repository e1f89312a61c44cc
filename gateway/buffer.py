"""diskcache adapter: the durable, per-lane record buffer.

Records are whole encoded batches (telemetry) or single control records, one write each, in one
SQLite transaction together with the lane's sequence counter, so a sequence number is never
reused even after kill -9. A record is deleted only by :meth:`DiskBuffer.ack`, after the cloud
broker's PUBACK. Telemetry over its byte budget drops the oldest records that are not in flight
(each one reported to ``on_dropped`` the moment it leaves the disk, so it is counted even if the
write that needed the room then fails); the control lane is never dropped for capacity, only
flagged. This is the only module that imports diskcache.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import diskcache

from bridge.store import LANES, Lane, Record
from gateway.accounting import BUFFER_OVERFLOW, DISK_ERROR, EXPIRED
from gateway.errors import StorageError

log = logging.getLogger(__name__)

RECORD_OVERHEAD_BYTES = 160  # SQLite row, index entry and meta row per record (measured roughly)
_PREFIX: dict[Lane, str] = {"control": "c", "telemetry": "t"}
_LANE_OF = {v: k for k, v in _PREFIX.items()}


@dataclass(frozen=True)
class Budget:
    max_bytes: int
    max_age_s: float = 0.0  # 0 = no limit


@dataclass
class _Meta:
    key: str
    seq: int
    topic: str
    readings: int
    created_ms: int
    size: int
    replay: bool


def _vkey(lane: Lane, seq: int) -> str:
    return f"{_PREFIX[lane]}:{seq:020d}"


def _mkey(lane: Lane, seq: int) -> str:
    return f"{_PREFIX[lane]}m:{seq:020d}"


def _seqkey(lane: Lane) -> str:
    return f"seq:{lane}"


class DiskBuffer:
    def __init__(
        self,
        directory: Path,
        budgets: dict[Lane, Budget],
        *,
        sync: Literal["normal", "full"] = "full",
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        on_dropped: Callable[[Record, str], None] = lambda rec, reason: None,
    ) -> None:
        """``on_dropped(record, reason)`` is called for every record removed without an ack
        (reason ``overflow`` or ``expired``)."""
        self._dir = Path(directory)
        self._budgets = budgets
        self._sync = sync
        self._clock_ms = clock_ms
        self.on_dropped = on_dropped
        self._cache: diskcache.Cache | None = None
        self._index: dict[Lane, OrderedDict[str, _Meta]] = {lane: OrderedDict() for lane in LANES}
        self._taken: set[str] = set()
        self._bytes: dict[Lane, int] = dict.fromkeys(LANES, 0)
        self._readings: dict[Lane, int] = dict.fromkeys(LANES, 0)
        self._next_seq: dict[Lane, int] = dict.fromkeys(LANES, 1)
        self.control_over_budget = False
        self.restored_readings = 0  # telemetry readings found on disk at open (from an earlier run)

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(
                str(self._dir),
                eviction_policy="none",
                size_limit=2**62,
                cull_limit=0,
                sqlite_synchronous=2 if self._sync == "full" else 1,
                sqlite_wal_autocheckpoint=256,
                disk_min_file_size=2**22,
            )
            self._load()
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open buffer in {self._dir}: {exc}") from exc

    def _load(self) -> None:
        cache = self._require()
        for lane in LANES:
            self._next_seq[lane] = int(cache.get(_seqkey(lane), 0)) + 1
        meta_prefixes = {f"{p}m:": lane for lane, p in _PREFIX.items()}
        for key in cache.iterkeys():
            if not isinstance(key, str) or key[:3] not in meta_prefixes:
                continue
            lane = meta_prefixes[key[:3]]
            raw = cache.get(key)
            if raw is None:
                continue
            topic, readings, created_ms, size = raw
            seq = int(key[3:])
            self._add_index(lane, _Meta(_vkey(lane, seq), seq, topic, readings, created_ms, size, True))
        self.restored_readings = self._readings["telemetry"]
        restored = {lane: len(self._index[lane]) for lane in LANES}
        if any(restored.values()):
            log.info("buffer reopened with %s records waiting", restored)

    def close(self) -> None:
        cache, self._cache = self._cache, None
        if cache is not None:
            cache.close()

    def _require(self) -> diskcache.Cache:
        if self._cache is None:
            raise StorageError("buffer is not open")
        return self._cache

    def _add_index(self, lane: Lane, meta: _Meta) -> None:
        self._index[lane][meta.key] = meta
        self._bytes[lane] += meta.size
        self._readings[lane] += meta.readings

    def _drop_index(self, lane: Lane, key: str) -> _Meta | None:
        meta = self._index[lane].pop(key, None)
        if meta is not None:
            self._bytes[lane] -= meta.size
            self._readings[lane] -= meta.readings
        self._taken.discard(key)
        return meta

    # ------------------------------------------------------------------ writing

    def next_seq(self, lane: Lane) -> int:
        return self._next_seq[lane]

    def append(self, lane: Lane, topic: str, build: Callable[[int], bytes], readings: int) -> Record:
        """Allocate the lane's next sequence number, build the payload with it and store it.

        Telemetry records dropped to stay within the budget are reported to ``on_dropped``.
        """
        cache = self._require()
        seq = self._next_seq[lane]
        payload = build(seq)
        size = len(payload) + len(topic) + RECORD_OVERHEAD_BYTES
        self._make_room(lane, size)
        created_ms = self._clock_ms()
        try:
            with cache.transact():
                cache.set(_vkey(lane, seq), payload)
                cache.set(_mkey(lane, seq), (topic, readings, created_ms, size))
                cache.set(_seqkey(lane), seq)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"buffer write failed: {exc}") from exc
        self._next_seq[lane] = seq + 1
        meta = _Meta(_vkey(lane, seq), seq, topic, readings, created_ms, size, False)
        self._add_index(lane, meta)
        if lane == "control":
            self._check_control_budget()
        return self._record(lane, meta, payload)

    def _make_room(self, lane: Lane, incoming: int) -> None:
        if lane != "telemetry":
            return
        budget = self._budgets[lane].max_bytes
        for key in list(self._index[lane]):
            if self._bytes[lane] + incoming <= budget:
                break
            if key in self._taken:
                continue
            rec = self._remove(lane, key)
            if rec is not None:
                self.on_dropped(rec, BUFFER_OVERFLOW)

    def _check_control_budget(self) -> None:
        over = self._bytes["control"] > self._budgets["control"].max_bytes
        if over and not self.control_over_budget:
            log.error(
                "control lane holds %d bytes, over its %d-byte budget: control records are never "
                "dropped for capacity; is the uplink down?", self._bytes["control"], self._budgets["control"].max_bytes,
            )
        self.control_over_budget = over

    def _remove(self, lane: Lane, key: str) -> Record | None:
        cache = self._require()
        meta = self._index[lane].get(key)
        if meta is None:
            return None
        try:
            with cache.transact():
                payload = cache.pop(key, b"")
                cache.delete(_mkey(lane, meta.seq))
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"buffer delete failed: {exc}") from exc
        self._drop_index(lane, key)
        return self._record(lane, meta, payload)

    @staticmethod
    def _record(lane: Lane, meta: _Meta, payload: bytes) -> Record:
        return Record(meta.key, lane, meta.seq, meta.topic, payload, meta.readings, meta.created_ms, meta.replay)

    def expire(self) -> int:
        """Remove records older than their lane's ``max_age_s`` (never records in flight); each is
        reported to ``on_dropped`` as ``expired``. Returns how many were removed."""
        now = self._clock_ms()
        removed = 0
        for lane in LANES:
            max_age = self._budgets[lane].max_age_s
            if max_age <= 0:
                continue
            cutoff = now - max_age * 1000
            for key, meta in list(self._index[lane].items()):
                if meta.created_ms > cutoff:
                    break
                if key not in self._taken and (rec := self._remove(lane, key)) is not None:
                    removed += 1
                    self.on_dropped(rec, EXPIRED)
        return removed

    # ------------------------------------------------------------------ RecordStore

    def take(self, lane: Lane, limit: int) -> list[Record]:
        cache = self._require()
        out: list[Record] = []
        missing: list[_Meta] = []
        for key, meta in self._index[lane].items():
            if len(out) >= limit:
                break
            if key in self._taken:
                continue
            try:
                payload = cache.get(key)
            except (OSError, sqlite3.Error) as exc:
                if not out:
                    raise StorageError(f"buffer read failed: {exc}") from exc
                break  # send what was read; the rest is tried again next time
            if payload is None:
                missing.append(meta)
                continue
            self._taken.add(key)
            out.append(self._record(lane, meta, payload))
        for meta in missing:  # index says on disk, disk disagrees: count it, never keep a phantom
            log.error("buffer record %s is missing on disk", meta.key)
            self._drop_index(lane, meta.key)
            self.on_dropped(self._record(lane, meta, b""), DISK_ERROR)
        return out

    def release(self, key: str) -> None:
        lane = _LANE_OF.get(key[:1])
        meta = self._index[lane].get(key) if lane else None
        if meta is not None:
            meta.replay = True
        self._taken.discard(key)

    def ack(self, key: str) -> Record | None:
        lane = _LANE_OF.get(key[:1])
        if lane is None:
            return None
        rec = self._remove(lane, key)
        if lane == "control" and rec is not None:
            self._check_control_budget()
        return rec

    def depth(self, lane: Lane) -> int:
        return len(self._index[lane])

    def available(self, lane: Lane) -> int:
        return len(self._index[lane]) - sum(1 for k in self._taken if k[:1] == _PREFIX[lane])

    def readings(self, lane: Lane) -> int:
        return self._readings[lane]

    def bytes_used(self, lane: Lane) -> int:
        return self._bytes[lane]

    def mark_backlog(self) -> None:
        """Flag every waiting record as backlog (sent with the replay flag)."""
        for lane in LANES:
            for meta in self._index[lane].values():
                meta.replay = True
