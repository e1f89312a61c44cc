"""The durable, per-lane record buffer: the gateway's :class:`~bridge.uplink.store.RecordStore`.

Records are whole encoded batches (telemetry) or single control records. The buffer composes
one part per job:

- :mod:`gateway.store.rows`: the diskcache adapter (keys, transactions, pragmas);
- :mod:`gateway.store.ledger`: order, counters, leases (in flight) and the replay flag, in
  bounded memory (a window of the oldest records; the rest is read from disk in order);
- :mod:`gateway.store.retention`: byte budgets, expiry and the disk's free-space headroom;
- :mod:`gateway.store.write_behind`: batches kept in memory on a healthy link, and the sequence
  numbers reserved for them;
- :mod:`gateway.store.stream`: the stream id and crash detection.

A record is deleted only by :meth:`DiskBuffer.ack`, after the cloud broker's PUBACK, or dropped
(over budget, expired, or to make room on a full disk), each drop reported to ``on_dropped``. The
lane's sequence counter is written with every delete (and, with write-behind, reserved in blocks),
and on open the next number is one past the larger of the counter, the reservation and the
highest key, so a sequence number is never reused even after kill -9. Opening reads a few keys
(not the whole backlog): the records found on disk are counted afterwards by :meth:`DiskBuffer.scan`
(all at once by :meth:`DiskBuffer.open` unless ``scan=False``). Errors of the disk are
:class:`~gateway.errors.StorageError` for the gateway; through the RecordStore port the forwarder
sees them as :class:`~bridge.uplink.store.StoreError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from bridge.uplink.store import LANES, Lane, Record, Source, StoreError
from gateway.errors import StorageError
from gateway.observe.accounting import DISK_ERROR
from gateway.store.ledger import WINDOW, Ledger, RecordMeta
from gateway.store.retention import Budget, Retention
from gateway.store.rows import DiskFull, Rows, record_key, reserve_key, seq_key
from gateway.store.stream import Stream
from gateway.store.write_behind import WriteBehind

__all__ = ["RECORD_OVERHEAD_BYTES", "Budget", "DiskBuffer"]

log = logging.getLogger(__name__)

RECORD_OVERHEAD_BYTES = 160  # SQLite row, index entry and meta row per record (measured roughly)
SCAN_CHUNK = 500  # records counted per scan step (a few milliseconds)
_WRITE_ATTEMPTS = 4  # a full disk: drop the oldest telemetry and try again, this many times in all


def _port_error(exc: StorageError) -> StoreError:
    """At the RecordStore port the gateway's StorageError becomes the bridge's StoreError (raised
    ``from`` it)."""
    return StoreError(str(exc))


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
        window: int = WINDOW,
    ) -> None:
        """``on_dropped(record, reason)`` is called for every record removed without an ack
        (reason ``overflow``, ``disk_full``, ``expired`` or ``disk_error``).

        ``min_free_bytes``: telemetry stops growing while the file system has less free space
        than this (the oldest batches make room instead), so SQLite never runs into a full disk
        on its own; control records may use the headroom. ``sqlite_pragmas`` (e.g.
        ``{"max_page_count": n}``) are applied to the database connection; tests use it to make
        SQLite hit a full disk. ``write_behind_s``: see :mod:`gateway.store.write_behind` (0 =
        every record is written before it is sent). ``window``: records per lane kept in memory
        beyond those in flight (see :mod:`gateway.store.ledger`).
        """
        self._dir = Path(directory)
        self._clock_ms = clock_ms
        self._on_dropped = on_dropped
        self._rows = Rows(self._dir, sync=sync, pragmas=sqlite_pragmas)
        self._ledger = Ledger(self._rows.page, self._rows.find, window=window)
        self._retention = Retention(self._dir, budgets, self._ledger, self._drop, min_free_bytes=min_free_bytes,
                                    clock_ms=clock_ms)
        self._behind = WriteBehind(write_behind_s, self._write, self._drop)
        self._stream = Stream(self._dir)
        self.disk_full_events = 0  # writes refused by the disk (SQLITE_FULL / ENOSPC)
        self.skipped_seqs: dict[Lane, tuple[int, int]] = {}  # reserved by a crashed run, maybe unused
        self._counted = False  # every record found on disk at open has been counted

    # ------------------------------------------------------------------ lifecycle

    def open(self, *, scan: bool = True) -> None:
        """Open the buffer; with ``scan`` also count every record found on disk (else call
        :meth:`scan` until it returns True: the counters grow meanwhile)."""
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._stream.before_open()  # before SQLite touches the file
        except OSError as exc:
            raise StorageError(f"cannot open buffer in {self._dir}: {exc}") from exc
        self._rows.open()
        self._counted = False
        try:
            self._load()
            while scan and not self.scan(SCAN_CHUNK, enforce=False):
                pass
            self._stream.open(self._rows, {lane: self._ledger.next_seq(lane) for lane in LANES})
        except (OSError, StorageError) as exc:
            self._rows.close()
            raise StorageError(f"cannot open buffer in {self._dir}: {exc}") from exc

    def _load(self) -> None:
        rows = self._rows
        used = {lane: rows.get_int(seq_key(lane)) for lane in LANES}  # highest seq known used
        reserved = {lane: rows.get_int(reserve_key(lane)) for lane in LANES}  # by write-behind
        highest = {lane: rows.highest_seq(lane) for lane in LANES}  # in sequence order = send order
        for lane in LANES:  # everything on disk is backlog; the oldest records are loaded, the rest counted later
            self._ledger.open_lane(lane, highest[lane], max(used[lane], reserved[lane], highest[lane]) + 1)
            self._behind.reserved[lane] = self._ledger.next_seq(lane) - 1
        self._retention.check_control()
        self._stream.count_unclean_start(rows)
        if self._stream.unclean_start:
            for lane in LANES:
                known = max(used[lane], highest[lane])
                if reserved[lane] > known:  # reserved by write-behind; some may never have been used
                    self.skipped_seqs[lane] = (known + 1, reserved[lane])
            log.warning("the previous run ended without closing the buffer (kill -9, crash or power loss): "
                        "readings it had not written to disk are lost; sequence numbers skipped: %s",
                        self.skipped_seqs or "none")

    def scan(self, limit: int = SCAN_CHUNK, *, enforce: bool = True) -> bool:
        """Count up to ``limit`` more of the records found on disk at open (their readings count
        as restored and as buffered at the same moment); True once all are counted. With
        ``enforce``, telemetry over its budget drops its oldest records as they are found."""
        if self._counted:
            return True
        done = not self._ledger.scanning or self._ledger.scan(limit)
        if enforce:
            self._retention.make_room("telemetry", 0)
        if done or not self._ledger.scanning:
            self._counted = True
            restored = {lane: self._ledger.depth(lane) for lane in LANES}
            if any(restored.values()):
                log.info("buffer reopened with %s records waiting", restored)
            self._retention.check_control()
            return True
        return False

    @property
    def restored_readings(self) -> int:
        """Telemetry readings found on disk at open (from an earlier run), as far as counted."""
        return self._ledger.restored_readings("telemetry")

    def close(self) -> None:
        """Write what is still only in memory, record the exact sequence counters (a clean stop
        leaves no gap), and close."""
        if not self._rows.is_open:
            return
        try:
            self._behind.persist_due(force=True, closing=True)
            counters: dict[str, object] = {seq_key(lane): self._ledger.next_seq(lane) - 1 for lane in LANES}
            # a clean stop releases the reservation: no gap
            self._rows.put({**counters, **{reserve_key(lane): 0 for lane in LANES}})
            self._stream.mark_stopped()
        except (OSError, StorageError) as exc:
            log.error("buffer could not be closed cleanly: %s", exc)
            self._rows.close()
        else:
            self._rows.close()
            self._stream.write_closed()

    @property
    def is_open(self) -> bool:
        return self._rows.is_open

    @property
    def stream(self) -> str:
        """The stream id of the records written from now on (set by :meth:`open`)."""
        return self._stream.id

    @property
    def new_stream_reason(self) -> str:
        """Why :meth:`open` started a new stream ("" = it continued the last one)."""
        return self._stream.new_stream_reason

    @property
    def unclean_start(self) -> bool:
        """The previous run did not close the buffer (kill -9, crash, power loss)."""
        return self._stream.unclean_start

    @property
    def unclean_starts(self) -> int:
        return self._stream.unclean_starts

    @property
    def control_over_budget(self) -> bool:
        return self._retention.control_over_budget

    # ------------------------------------------------------------------ writing

    def next_seq(self, lane: Lane) -> int:
        return self._ledger.next_seq(lane)

    def append(self, lane: Lane, topic: str, build: Callable[[int], bytes], readings: int) -> Record:
        """Allocate the lane's next sequence number, build the payload with it and store it.

        Telemetry records dropped to stay within the budget (or to make room on a full disk)
        are reported to ``on_dropped``. Raises :class:`StorageError` if the write fails anyway;
        the sequence number is then not used.
        """
        if not self._rows.is_open:
            raise StorageError("buffer is not open")
        seq = self._ledger.next_seq(lane)
        payload = build(seq)
        size = len(payload) + len(topic) + RECORD_OVERHEAD_BYTES
        self._retention.make_room(lane, size)
        meta = record_key(lane, seq, readings, self._clock_ms(), size, topic)
        if self._behind.applies(lane):
            self._behind.reserve(lane, seq)
            self._behind.stage(meta.key, payload)
        else:
            self._write({meta.key: payload})
        self._ledger.add(meta)
        self._ledger.trim(lane, self._behind.is_staged)
        if lane == "control":
            self._retention.check_control()
        return self._record(meta, payload)

    def _write(self, rows: Mapping[str, object]) -> None:
        """Write ``rows`` in one transaction. A full disk makes the oldest telemetry batch that is
        on disk and not in flight give way (counted as ``disk_full``), up to three times."""
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                self._rows.put(rows)
                return
            except DiskFull:
                self.disk_full_events += 1
                if attempt == _WRITE_ATTEMPTS or not self._retention.give_way(skip=self._behind.is_staged):
                    raise
                log.warning("disk full: dropped the oldest telemetry batch to make room")

    def set_link_up(self, up: bool) -> None:
        """Write-behind applies only while the uplink is up; when it drops, everything staged
        goes to disk at once."""
        self._behind.set_link_up(up)

    def persist_due(self, force: bool = False) -> int:
        """Write write-behind batches older than ``write_behind_s`` (all with ``force``) to disk;
        returns how many. On failure they stay in memory and are tried again later."""
        return self._behind.persist_due(force)

    def expire(self) -> int:
        """Remove records older than their lane's ``max_age_s`` (never records in flight); each is
        reported to ``on_dropped`` as ``expired``. Returns how many were removed."""
        return self._retention.expire()

    # ------------------------------------------------------------------ deleting: one path

    def _delete(self, keys: list[str]) -> dict[str, Record]:
        """Remove the records of ``keys`` that the buffer holds: from disk in one transaction (with
        the sequence counters of their lanes; none at all for records only in memory), then from
        memory. Returns them by key, without payload; raises StorageError (and removes nothing) if
        the disk fails."""
        found = [meta for key in dict.fromkeys(keys) if (meta := self._ledger.find(key)) is not None]
        on_disk = [meta for meta in found if not self._behind.is_staged(meta.key)]
        if on_disk:
            counters = {seq_key(meta.lane): self._ledger.next_seq(meta.lane) - 1 for meta in on_disk}
            self._rows.delete([meta.key for meta in on_disk], counters)
        removed = {meta.key: self._record(meta, b"") for meta in found}
        for meta in found:  # memory changes only once the disk has
            self._behind.unstage(meta.key)
            self._ledger.remove(meta)
        if any(meta.lane == "control" for meta in found):
            self._retention.check_control()
        return removed

    def _drop(self, key: str, reason: str) -> bool:
        """Remove one record without an ack and report it to ``on_dropped``."""
        removed = self._delete([key]).get(key)
        if removed is not None:
            self._on_dropped(removed, reason)
        return removed is not None

    # ------------------------------------------------------------------ RecordStore

    def take(self, lane: Lane, limit: int, source: Source = "any") -> list[Record]:
        """Up to ``limit`` oldest records not in flight: of any kind, only ``live`` ones (written
        since the connection came up) or only ``backlog`` ones (replay)."""
        if not self._rows.is_open:
            raise StoreError("buffer is not open")
        out: list[Record] = []
        missing: list[RecordMeta] = []
        for meta in self._ledger.candidates(lane, limit, source):
            try:
                payload = self._behind.payload(meta.key) or self._rows.get(meta.key)
            except StorageError as exc:
                if not out:
                    raise _port_error(exc) from exc
                break  # send what was read; the rest is tried again next time
            if payload is None:
                missing.append(meta)
                continue
            out.append(self._record(meta, payload))
            self._ledger.lease(meta)
        for meta in missing:  # the ledger says on disk, the disk disagrees: count it, never keep a phantom
            log.error("buffer record %s is missing on disk", meta.key)
            record = self._record(meta, b"")
            self._ledger.remove(meta)
            self._on_dropped(record, DISK_ERROR)
        return out

    def release(self, key: str) -> None:
        self._ledger.release(key)

    def release_all(self) -> int:
        return self._ledger.release_all()

    def mark_backlog(self) -> None:
        """Flag every waiting record as backlog (sent with the replay flag)."""
        self._ledger.mark_backlog()

    def ack(self, *keys: str) -> dict[str, Record]:
        """Delete acknowledged records in one transaction (one fsync; none at all for records that
        never left memory). Returns those deleted, by key, without their payload."""
        if not self._rows.is_open:
            raise StoreError("buffer is not open")
        try:
            return self._delete(list(keys))
        except StorageError as exc:
            raise _port_error(exc) from exc

    def depth(self, lane: Lane) -> int:
        return self._ledger.depth(lane)

    def available(self, lane: Lane, source: Source = "any") -> int:
        return self._ledger.available(lane, source)

    def in_flight(self, lane: Lane, source: Source = "any") -> int:
        return self._ledger.in_flight(lane, source)

    def oldest_lease_s(self) -> float:
        return self._ledger.oldest_lease_s()

    # ------------------------------------------------------------------ figures

    def readings(self, lane: Lane) -> int:
        return self._ledger.readings(lane)

    def bytes_used(self, lane: Lane) -> int:
        return self._ledger.bytes_used(lane)

    def records_in_memory(self) -> int:
        """Records whose metadata the buffer holds in memory now (bounded, whatever the backlog)."""
        return self._ledger.in_memory()

    def free_disk_bytes(self) -> int:
        return self._retention.free_disk_bytes()

    def disk_usage_bytes(self) -> int:
        """What the buffer occupies on disk: the database, its write-ahead log and value files."""
        return sum(p.stat().st_size for p in self._dir.rglob("*") if p.is_file())

    def _record(self, meta: RecordMeta, payload: bytes) -> Record:
        return Record(meta.key, meta.lane, meta.seq, meta.topic, payload, meta.readings, meta.created_ms,
                      self._ledger.is_replay(meta.key, meta.seq, meta.lane))
