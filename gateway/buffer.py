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
import shutil
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import diskcache

from bridge.store import LANES, Lane, Record, Source
from gateway.accounting import BUFFER_OVERFLOW, DISK_ERROR, DISK_FULL, EXPIRED
from gateway.errors import StorageError

log = logging.getLogger(__name__)

RECORD_OVERHEAD_BYTES = 160  # SQLite row, index entry and meta row per record (measured roughly)
WAL_LIMIT_BYTES = 4 * 1024 * 1024  # the write-ahead log is truncated back to this after a checkpoint
_WRITE_ATTEMPTS = 4  # a full disk: drop the oldest telemetry and try again, this many times in all
_FREE_CHECK_S = 1.0
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


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno == 28  # ENOSPC
    return "full" in str(exc).lower()  # sqlite3: "database or disk is full"


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
        min_free_bytes: int = 0,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        on_dropped: Callable[[Record, str], None] = lambda rec, reason: None,
        sqlite_pragmas: dict[str, int] | None = None,
    ) -> None:
        """``on_dropped(record, reason)`` is called for every record removed without an ack
        (reason ``overflow``, ``disk_full``, ``expired`` or ``disk_error``).

        ``min_free_bytes``: telemetry stops growing while the file system has less free space
        than this (the oldest batches make room instead), so SQLite never runs into a full disk
        on its own; control records may use the headroom. ``sqlite_pragmas`` (e.g.
        ``{"max_page_count": n}``) are applied to the database connection; tests use it to make
        SQLite hit a full disk.
        """
        self._dir = Path(directory)
        self._budgets = budgets
        self._sync = sync
        self._min_free = min_free_bytes
        self._pragmas = dict(sqlite_pragmas or {})
        self._free_checked = 0.0
        self._disk_tight = False
        self.disk_full_events = 0  # writes refused by the disk (SQLITE_FULL / ENOSPC)
        self._clock_ms = clock_ms
        self.on_dropped = on_dropped
        self._cache: diskcache.Cache | None = None
        self._index: dict[Lane, OrderedDict[str, _Meta]] = {lane: OrderedDict() for lane in LANES}
        # Live records: written during the current connection and not yet sent or released. All
        # other records are backlog (replay). Both are in ``_index`` in sequence order.
        self._live: dict[Lane, OrderedDict[str, None]] = {lane: OrderedDict() for lane in LANES}
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
                sqlite_journal_size_limit=WAL_LIMIT_BYTES,
                disk_min_file_size=2**22,
                **{f"sqlite_{name}": value for name, value in self._pragmas.items()},
            )
            self._load()
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open buffer in {self._dir}: {exc}") from exc

    def _load(self) -> None:
        cache = self._require()
        for lane in LANES:
            self._next_seq[lane] = int(cache.get(_seqkey(lane), 0)) + 1
        meta_prefixes = {f"{p}m:": lane for lane, p in _PREFIX.items()}
        found: list[tuple[Lane, _Meta]] = []
        for key in cache.iterkeys():
            if not isinstance(key, str) or key[:3] not in meta_prefixes:
                continue
            lane = meta_prefixes[key[:3]]
            raw = cache.get(key)
            if raw is None:
                continue
            topic, readings, created_ms, size = raw
            seq = int(key[3:])
            found.append((lane, _Meta(_vkey(lane, seq), seq, topic, readings, created_ms, size, True)))
        for lane, meta in sorted(found, key=lambda item: item[1].seq):  # send order = sequence order
            self._add_index(lane, meta)
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
        self._live[lane].pop(key, None)
        return meta

    # ------------------------------------------------------------------ writing

    def next_seq(self, lane: Lane) -> int:
        return self._next_seq[lane]

    def append(self, lane: Lane, topic: str, build: Callable[[int], bytes], readings: int) -> Record:
        """Allocate the lane's next sequence number, build the payload with it and store it.

        Telemetry records dropped to stay within the budget (or to make room on a full disk)
        are reported to ``on_dropped``. Raises :class:`StorageError` if the write fails anyway;
        the sequence number is then not used.
        """
        cache = self._require()
        seq = self._next_seq[lane]
        payload = build(seq)
        size = len(payload) + len(topic) + RECORD_OVERHEAD_BYTES
        self._make_room(lane, size)
        created_ms = self._clock_ms()
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                with cache.transact():
                    cache.set(_vkey(lane, seq), payload)
                    cache.set(_mkey(lane, seq), (topic, readings, created_ms, size))
                    cache.set(_seqkey(lane), seq)
                break
            except (OSError, sqlite3.Error) as exc:
                full = _is_disk_full(exc)
                self.disk_full_events += full
                if not full or attempt == _WRITE_ATTEMPTS or not self._drop_oldest_telemetry(DISK_FULL):
                    raise StorageError(f"buffer write failed: {exc}") from exc
                log.warning("disk full: dropped the oldest telemetry batch to make room")
        self._next_seq[lane] = seq + 1
        meta = _Meta(_vkey(lane, seq), seq, topic, readings, created_ms, size, False)
        self._add_index(lane, meta)
        self._live[lane][meta.key] = None
        if lane == "control":
            self._check_control_budget()
        return self._record(lane, meta, payload)

    def _make_room(self, lane: Lane, incoming: int) -> None:
        if lane != "telemetry":
            return
        limit, reason = self._budgets[lane].max_bytes, BUFFER_OVERFLOW
        if self._disk_is_tight(incoming):  # the disk is nearly full: telemetry may not grow
            limit, reason = min(limit, self._bytes[lane]), DISK_FULL
        while self._bytes[lane] + incoming > limit:
            if not self._drop_oldest_telemetry(reason):
                break

    def _drop_oldest_telemetry(self, reason: str) -> bool:
        """Remove the oldest telemetry record not in flight; False if there is none (or the
        delete itself fails)."""
        key = next((k for k in self._index["telemetry"] if k not in self._taken), None)
        if key is None:
            return False
        try:
            rec = self._remove("telemetry", key)
        except StorageError as exc:
            log.error("cannot drop %s to make room: %s", key, exc)
            return False
        if rec is not None:
            self.on_dropped(rec, reason)
        return rec is not None

    def _disk_is_tight(self, incoming: int) -> bool:
        """True while free space minus ``incoming`` is below ``min_free_bytes`` (checked at most
        once a second; statvfs is cheap but not free)."""
        if self._min_free <= 0:
            return False
        now = time.monotonic()
        if now - self._free_checked >= _FREE_CHECK_S:
            self._free_checked = now
            tight = self.free_disk_bytes() - incoming < self._min_free
            if tight != self._disk_tight:
                log.warning("disk %s: %d bytes free, headroom %d", "nearly full" if tight else "has room again",
                            self.free_disk_bytes(), self._min_free)
            self._disk_tight = tight
        return self._disk_tight

    def free_disk_bytes(self) -> int:
        try:
            return shutil.disk_usage(self._dir).free
        except OSError:
            return 0

    def disk_usage_bytes(self) -> int:
        """What the buffer occupies on disk: the database, its write-ahead log and value files."""
        return sum(p.stat().st_size for p in self._dir.rglob("*") if p.is_file())

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

    def take(self, lane: Lane, limit: int, source: Source = "any") -> list[Record]:
        """Up to ``limit`` oldest records not in flight: of any kind, only ``live`` ones (written
        since the connection came up) or only ``backlog`` ones (replay)."""
        cache = self._require()
        out: list[Record] = []
        missing: list[_Meta] = []
        index = self._index[lane]
        live = self._live[lane]
        keys = iter(live) if source == "live" else iter(index)
        for key in keys:
            if len(out) >= limit:
                break
            if key in self._taken or (source == "backlog" and key in live):
                continue
            meta = index[key]
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
        for rec in out:
            live.pop(rec.key, None)  # once sent, a record is no longer live: a resend is a replay
        return out

    def release(self, key: str) -> None:
        lane = _LANE_OF.get(key[:1])
        meta = self._index[lane].get(key) if lane else None
        if meta is not None:
            meta.replay = True
        self._taken.discard(key)

    def ack_many(self, keys: list[str]) -> dict[str, Record]:
        """Delete several acknowledged records in one transaction (one fsync). The returned
        records carry no payload (it is not read back)."""
        cache = self._require()
        found: list[tuple[Lane, _Meta]] = []
        for key in keys:
            lane = _LANE_OF.get(key[:1])
            meta = self._index[lane].get(key) if lane else None
            if lane and meta is not None:
                found.append((lane, meta))
        try:
            with cache.transact():
                for lane, meta in found:
                    cache.delete(meta.key)
                    cache.delete(_mkey(lane, meta.seq))
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"buffer delete failed: {exc}") from exc
        out: dict[str, Record] = {}
        for lane, meta in found:  # the index changes only once the disk has
            self._drop_index(lane, meta.key)
            out[meta.key] = self._record(lane, meta, b"")
        if any(lane == "control" for lane, _ in found):
            self._check_control_budget()
        return out

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

    def available(self, lane: Lane, source: Source = "any") -> int:
        live = len(self._live[lane])  # live records are never in flight (taking one ends it)
        if source == "live":
            return live
        waiting = len(self._index[lane]) - sum(1 for k in self._taken if k[:1] == _PREFIX[lane])
        return waiting - live if source == "backlog" else waiting

    def readings(self, lane: Lane) -> int:
        return self._readings[lane]

    def bytes_used(self, lane: Lane) -> int:
        return self._bytes[lane]

    def mark_backlog(self) -> None:
        """Flag every waiting record as backlog (sent with the replay flag)."""
        for lane in LANES:
            for meta in self._index[lane].values():
                meta.replay = True
            self._live[lane].clear()
