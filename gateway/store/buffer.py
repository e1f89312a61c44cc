"""diskcache adapter: the durable, per-lane record buffer.

Records are whole encoded batches (telemetry) or single control records, one row each: the
record's metadata is part of its key (``t:{seq:020d}:{readings}:{created_ms}:{size}:{topic}``), so
an append writes one row and reopening reads only keys. The lane's sequence counter is written
with every delete (and, with write-behind, reserved in blocks), and on open the next number is one
past the larger of the counter and the highest key, so a sequence number is never reused even
after kill -9. With ``write_behind_s`` > 0, telemetry batches written while the uplink is up are
kept in memory first and reach the disk only if they are not acknowledged within that time (or
the link drops, or the gateway stops): on a healthy link the disk is hardly written at all.

The buffer also owns the **stream id**: a random id born with the buffer and stored in it, carried
in every record it holds, so ``(gateway, stream, lane, seq)`` names a record forever. A stream
continues only while the buffer provably continues the same history: a clean stop writes the
identity of the database file (device, inode, size, modification and change times) next to it,
and the next open keeps the stream only if the file is exactly that one, untouched. A new or wiped
data dir, a crash, or a dir copied or restored from a backup (any write changes the file's change
time) starts a new stream; records already on disk keep the stream they were written with.

A record is deleted only by :meth:`DiskBuffer.ack`, after the cloud broker's PUBACK. Telemetry
over its byte budget drops the oldest records that are not in flight (each one reported to
``on_dropped`` the moment it leaves the disk, so it is counted even if the write that needed the
room then fails); the control lane is never dropped for capacity, only flagged. This is the only
module that imports diskcache.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import diskcache

from bridge.uplink.store import LANES, Lane, Record, Source
from gateway.errors import StorageError
from gateway.observe.accounting import BUFFER_OVERFLOW, DISK_ERROR, DISK_FULL, EXPIRED

log = logging.getLogger(__name__)

RECORD_OVERHEAD_BYTES = 160  # SQLite row, index entry and meta row per record (measured roughly)
WAL_LIMIT_BYTES = 8 * 1024 * 1024  # the write-ahead log is truncated back to this after a checkpoint
WAL_CHECKPOINT_PAGES = 1000  # checkpoint every ~4 MB of log: hot pages reach the database once per checkpoint
SEQ_RESERVE = 64  # with write-behind, sequence numbers are reserved on disk this many at a time
RUNNING_MARKER = "running"  # present while the buffer is open: found at open = the last run crashed
CLOSED_MARKER = "closed"  # written by a clean close: the stream and the database file's identity
DB_FILE: str = diskcache.core.DBNAME  # "cache.db": the database file
_STREAM_KEY = "stream"
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
    staged_at: float = 0.0  # write-behind: monotonic time it was staged in memory; 0 = on disk


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno == 28  # ENOSPC
    return "full" in str(exc).lower()  # sqlite3: "database or disk is full"


def _key(lane: Lane, seq: int, readings: int, created_ms: int, size: int, topic: str) -> str:
    return f"{_PREFIX[lane]}:{seq:020d}:{readings}:{created_ms}:{size}:{topic}"


def _parse_key(key: object) -> tuple[Lane, _Meta] | None:
    if not isinstance(key, str) or key[:2] not in ("t:", "c:"):
        return None
    try:
        seq, readings, created_ms, size, topic = key[2:].split(":", 4)
        meta = _Meta(key, int(seq), topic, int(readings), int(created_ms), int(size), True)
    except ValueError:
        return None
    return _LANE_OF[key[0]], meta


def _reservekey(lane: Lane) -> str:
    return f"reserve:{lane}"


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
        write_behind_s: float = 0.0,
    ) -> None:
        """``on_dropped(record, reason)`` is called for every record removed without an ack
        (reason ``overflow``, ``disk_full``, ``expired`` or ``disk_error``).

        ``min_free_bytes``: telemetry stops growing while the file system has less free space
        than this (the oldest batches make room instead), so SQLite never runs into a full disk
        on its own; control records may use the headroom. ``sqlite_pragmas`` (e.g.
        ``{"max_page_count": n}``) are applied to the database connection; tests use it to make
        SQLite hit a full disk. ``write_behind_s``: see the module docstring (0 = every record is
        written before it is sent).
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
        self._write_behind_s = write_behind_s
        self._link_up = False
        self._staged: dict[str, bytes] = {}  # write-behind payloads not on disk yet
        self._reserved: dict[Lane, int] = dict.fromkeys(LANES, 0)  # highest seq reserved on disk
        self.unclean_start = False  # the previous run did not close the buffer (kill -9, crash, power)
        self.unclean_starts = 0  # how often that happened, over the life of this buffer
        self.skipped_seqs: dict[Lane, tuple[int, int]] = {}  # reserved by a crashed run, maybe unused
        self.stream = ""  # set by open(): the stream id of the records written from now on
        self.new_stream_reason = ""  # why open() started a new stream ("" = it continued the last one)

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            continued = self._continued_stream()  # before SQLite touches the file
            self._cache = diskcache.Cache(
                str(self._dir),
                eviction_policy="none",
                size_limit=2**62,
                cull_limit=0,
                sqlite_synchronous=2 if self._sync == "full" else 1,
                sqlite_wal_autocheckpoint=WAL_CHECKPOINT_PAGES,
                sqlite_journal_size_limit=WAL_LIMIT_BYTES,
                disk_min_file_size=2**22,
                **{f"sqlite_{name}": value for name, value in self._pragmas.items()},
            )
            self._load()
            self._open_stream(continued)
            self._mark_running()
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open buffer in {self._dir}: {exc}") from exc

    def _load(self) -> None:
        cache = self._require()
        used = {lane: int(cache.get(_seqkey(lane), 0)) for lane in LANES}  # highest seq known used
        reserved = {lane: int(cache.get(_reservekey(lane), 0)) for lane in LANES}  # write-behind
        found = [parsed for key in cache.iterkeys() if (parsed := _parse_key(key)) is not None]
        highest = dict.fromkeys(LANES, 0)
        for lane, meta in sorted(found, key=lambda item: item[1].seq):  # send order = sequence order
            self._add_index(lane, meta)
            highest[lane] = meta.seq
        for lane in LANES:
            self._next_seq[lane] = max(used[lane], reserved[lane], highest[lane]) + 1
            self._reserved[lane] = self._next_seq[lane] - 1
        self.restored_readings = self._readings["telemetry"]
        restored = {lane: len(self._index[lane]) for lane in LANES}
        if any(restored.values()):
            log.info("buffer reopened with %s records waiting", restored)
        self.unclean_starts = int(cache.get("unclean_starts", 0))
        if (self._dir / RUNNING_MARKER).exists():
            self.unclean_start = True
            self.unclean_starts += 1
            cache.set("unclean_starts", self.unclean_starts)
            for lane in LANES:
                known = max(used[lane], highest[lane])
                if reserved[lane] > known:  # reserved by write-behind; some may never have been used
                    self.skipped_seqs[lane] = (known + 1, reserved[lane])
            log.warning("the previous run ended without closing the buffer (kill -9, crash or power loss): "
                        "readings it had not written to disk are lost; sequence numbers skipped: %s",
                        self.skipped_seqs or "none")

    def _db_identity(self) -> dict[str, int] | None:
        try:
            st = (self._dir / DB_FILE).stat()
        except FileNotFoundError:
            return None
        return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "ctime_ns": st.st_ctime_ns}

    def _continued_stream(self) -> str | None:
        """The stream a clean close left, if the database file is still exactly the one it closed
        (and the last run did stop cleanly); else None, with the reason in ``new_stream_reason``."""
        closed = self._dir / CLOSED_MARKER
        identity = self._db_identity()
        try:
            record = json.loads(closed.read_text()) if closed.exists() else None
            closed.unlink(missing_ok=True)  # from now on only this run's clean close may vouch
        except (OSError, ValueError):
            record = None
        if identity is None:
            self.new_stream_reason = "new buffer"
        elif (self._dir / RUNNING_MARKER).exists():
            self.new_stream_reason = "the previous run did not stop cleanly"
        elif not isinstance(record, dict) or record.get("db") != identity:
            self.new_stream_reason = "the data dir was copied, restored or changed while stopped"
        elif isinstance(stream := record.get("stream"), str) and stream:
            return stream
        else:
            self.new_stream_reason = "no stream recorded"
        return None

    def _open_stream(self, continued: str | None) -> None:
        cache = self._require()
        if continued is not None and cache.get(_STREAM_KEY) == continued:
            self.stream, self.new_stream_reason = continued, ""
            return
        self.new_stream_reason = self.new_stream_reason or "stream id missing from the buffer"
        self.stream = secrets.token_hex(8)
        cache.set(_STREAM_KEY, self.stream)
        log.info("buffer starts stream %s (%s); sequence numbers continue from %s", self.stream,
                 self.new_stream_reason, dict(self._next_seq))

    def _mark_running(self) -> None:
        (self._dir / RUNNING_MARKER).write_text("the gateway has this buffer open\n")

    def close(self) -> None:
        """Write what is still only in memory, record the exact sequence counters (a clean stop
        leaves no gap), and close."""
        cache = self._cache
        if cache is None:
            return
        try:
            self.persist_due(force=True, closing=True)
            with cache.transact():
                for lane in LANES:
                    cache.set(_seqkey(lane), self._next_seq[lane] - 1)
                    cache.set(_reservekey(lane), 0)  # a clean stop releases the reservation: no gap
            (self._dir / RUNNING_MARKER).unlink(missing_ok=True)
        except (OSError, sqlite3.Error, StorageError) as exc:
            log.error("buffer could not be closed cleanly: %s", exc)
        else:
            cache.close()
            self._write_closed_marker()
        finally:
            self._cache = None
            cache.close()

    def _write_closed_marker(self) -> None:
        """After a clean close: the stream and the identity of the database file as it is now."""
        try:
            (self._dir / CLOSED_MARKER).write_text(json.dumps({"stream": self.stream, "db": self._db_identity()}))
        except OSError as exc:  # the next start begins a new stream: safe
            log.warning("could not record the clean stop (the next start begins a new stream): %s", exc)

    @property
    def is_open(self) -> bool:
        return self._cache is not None

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
        self._require()
        seq = self._next_seq[lane]
        payload = build(seq)
        size = len(payload) + len(topic) + RECORD_OVERHEAD_BYTES
        self._make_room(lane, size)
        created_ms = self._clock_ms()
        key = _key(lane, seq, readings, created_ms, size, topic)
        meta = _Meta(key, seq, topic, readings, created_ms, size, False)
        if lane == "telemetry" and self._write_behind_s > 0 and self._link_up:
            if seq > self._reserved[lane]:  # keep sequence numbers unique across a crash
                self._write({_reservekey(lane): seq + SEQ_RESERVE - 1})
                self._reserved[lane] = seq + SEQ_RESERVE - 1
            meta.staged_at = time.monotonic()
            self._staged[key] = payload
        else:
            self._write({key: payload})
        self._next_seq[lane] = seq + 1
        self._add_index(lane, meta)
        self._live[lane][meta.key] = None
        if lane == "control":
            self._check_control_budget()
        return self._record(lane, meta, payload)

    def _write(self, rows: dict[str, object]) -> None:
        """Write ``rows`` in one transaction. A full disk makes the oldest telemetry batch that is
        on disk and not in flight give way (counted as ``disk_full``), up to three times."""
        cache = self._require()
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                with cache.transact():
                    for key, value in rows.items():
                        cache.set(key, value)
                return
            except (OSError, sqlite3.Error) as exc:
                full = _is_disk_full(exc)
                self.disk_full_events += full
                if not full or attempt == _WRITE_ATTEMPTS or not self._drop_oldest_telemetry(DISK_FULL, on_disk=True):
                    raise StorageError(f"buffer write failed: {exc}") from exc
                log.warning("disk full: dropped the oldest telemetry batch to make room")

    def _counter(self, lane: Lane) -> int:
        """The highest sequence number used so far (stored with every delete)."""
        return self._next_seq[lane] - 1

    def set_link_up(self, up: bool) -> None:
        """Write-behind applies only while the uplink is up; when it drops, everything staged
        goes to disk at once."""
        self._link_up = up
        if not up:
            try:
                self.persist_due(force=True)
            except StorageError as exc:  # they stay in memory; housekeeping tries again
                log.error("could not write the batches kept in memory: %s", exc)

    def persist_due(self, force: bool = False, closing: bool = False) -> int:
        """Write staged records older than ``write_behind_s`` (all with ``force``) to disk in one
        transaction; returns how many. On failure they stay staged and are tried again later,
        except when ``closing``: then each one that cannot be written is dropped and counted."""
        if not self._staged:
            return 0
        cutoff = time.monotonic() - self._write_behind_s
        due: list[_Meta] = []
        for key in self._staged:
            meta = self._index["telemetry"].get(key)
            if meta is not None and (force or meta.staged_at <= cutoff):
                due.append(meta)
        if not due:
            return 0
        try:
            self._write({meta.key: self._staged[meta.key] for meta in due})
        except StorageError:
            if not closing:
                raise
            return self._persist_one_by_one(due)
        for meta in due:
            del self._staged[meta.key]
            meta.staged_at = 0.0
        return len(due)

    def _persist_one_by_one(self, due: list[_Meta]) -> int:
        """Closing on a (nearly) full disk: write what fits; what does not is counted as dropped
        (``disk_full``) instead of vanishing with the process."""
        written = 0
        for meta in due:
            try:
                self._write({meta.key: self._staged[meta.key]})
            except StorageError as exc:
                rec = self._remove("telemetry", meta.key)
                if rec is not None:
                    log.error("batch seq=%d (%d readings) could not be written at stop: %s", meta.seq,
                              meta.readings, exc)
                    self.on_dropped(rec, DISK_FULL)
                continue
            del self._staged[meta.key]
            meta.staged_at = 0.0
            written += 1
        return written

    def _make_room(self, lane: Lane, incoming: int) -> None:
        if lane != "telemetry":
            return
        limit, reason = self._budgets[lane].max_bytes, BUFFER_OVERFLOW
        if self._disk_is_tight(incoming):  # the disk is nearly full: telemetry may not grow
            limit, reason = min(limit, self._bytes[lane]), DISK_FULL
        while self._bytes[lane] + incoming > limit:
            if not self._drop_oldest_telemetry(reason):
                break

    def _drop_oldest_telemetry(self, reason: str, on_disk: bool = False) -> bool:
        """Remove the oldest telemetry record not in flight (``on_disk``: only one that frees
        disk space); False if there is none (or the delete itself fails)."""
        key = next((k for k in self._index["telemetry"]
                    if k not in self._taken and not (on_disk and k in self._staged)), None)
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
        meta = self._index[lane].get(key)
        if meta is None:
            return None
        staged = self._staged.pop(key, None)
        if staged is not None:  # never reached the disk: nothing to delete there
            self._drop_index(lane, key)
            return self._record(lane, meta, staged)
        cache = self._require()
        try:
            with cache.transact():
                payload = cache.pop(key, b"")
                cache.set(_seqkey(lane), self._counter(lane))
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
                payload = self._staged.get(key) or cache.get(key)
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
        """Delete several acknowledged records in one transaction (one fsync; none at all for
        records that never left memory). The returned records carry no payload."""
        cache = self._require()
        found: list[tuple[Lane, _Meta]] = []
        for key in keys:
            lane = _LANE_OF.get(key[:1])
            meta = self._index[lane].get(key) if lane else None
            if lane and meta is not None:
                found.append((lane, meta))
        on_disk = [(lane, meta) for lane, meta in found if meta.key not in self._staged]
        if on_disk:
            try:
                with cache.transact():
                    for _lane, meta in on_disk:
                        cache.delete(meta.key)
                    for lane in {lane for lane, _ in on_disk}:
                        cache.set(_seqkey(lane), self._counter(lane))
            except (OSError, sqlite3.Error) as exc:
                raise StorageError(f"buffer delete failed: {exc}") from exc
        out: dict[str, Record] = {}
        for lane, meta in found:  # the index changes only once the disk has
            self._staged.pop(meta.key, None)
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
