"""What the buffer may keep: each lane's byte budget and age limit, and the disk's free-space headroom.

Telemetry over its byte budget drops its oldest records that are not in flight, each one through
``drop`` (which removes it and reports it, so it is counted the moment it leaves, even if the write
that needed the room then fails). On a disk below its headroom the telemetry lane keeps the size it
had when the disk became tight: each new batch replaces the oldest ones by size (the lane stays
within one batch of that size; it neither grows nor dwindles). When the file system is full and
refuses even the delete, a step of the disk reserve (:mod:`gateway.store.reserve`) is given back
and the delete is tried again, so the oldest records give way, not the newest. The control lane is never
dropped for capacity, only flagged (:attr:`Retention.control_over_budget`). Records older than
their lane's ``max_age_s`` expire (never while in flight); on a full file system those deletes
use the disk reserve as well.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bridge.uplink.store import LANES, Lane
from gateway.errors import StorageError
from gateway.observe.accounting import BUFFER_OVERFLOW, DISK_FULL, EXPIRED
from gateway.store.ledger import Ledger
from gateway.store.reserve import RESERVE_FILE, RESERVE_STEP_BYTES, Reserve
from gateway.store.rows import DiskFull

log = logging.getLogger(__name__)

_FREE_CHECK_S = 1.0


@dataclass(frozen=True)
class Budget:
    max_bytes: int
    max_age_s: float = 0.0  # 0 = no limit


# drop(key, reason): remove the record and report it; False if it was not there (StorageError if the
# delete fails)
Drop = Callable[[str, str], bool]


class Retention:
    def __init__(self, directory: Path, budgets: dict[Lane, Budget], ledger: Ledger, drop: Drop, *,
                 min_free_bytes: int = 0, clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self._dir = directory
        self._budgets = budgets
        self._ledger = ledger
        self._drop = drop
        self._min_free = min_free_bytes
        self._clock_ms = clock_ms
        self._free_checked = 0.0
        self._disk_tight = False
        self._tight_bytes: int | None = None  # the telemetry lane's size when the disk became tight
        self._refused = False  # the file system refused a write in this run (cleared once the reserve is whole)
        self._reserve = Reserve(directory / RESERVE_FILE)
        self.control_over_budget = False

    def make_room(self, lane: Lane, incoming: int) -> None:
        """Before ``incoming`` bytes are appended: drop the oldest telemetry while the lane would
        exceed its budget (or, on a disk below its headroom, the size it had when the disk became
        tight: a new batch replaces the oldest by size, without dropping more than that)."""
        self._check_disk(incoming)
        if lane != "telemetry":
            return
        limit, reason = self._budgets[lane].max_bytes, BUFFER_OVERFLOW
        if self._disk_tight:  # the disk is nearly full: telemetry may not grow
            if self._tight_bytes is None:
                self._tight_bytes = self._ledger.bytes_used(lane)
            limit, reason = min(limit, self._tight_bytes), DISK_FULL
        while self._ledger.bytes_used(lane) + incoming > limit:
            if not self.drop_oldest_telemetry(reason):
                break

    def give_way(self, skip: Callable[[str], bool] = lambda key: False) -> bool:
        """The file system refused a write: from now on the telemetry lane holds its size (see
        :meth:`make_room`), and the oldest telemetry record not in flight (nor ``skip``-ped) is
        dropped as ``disk_full``. False if there is none (or the delete fails)."""
        if not self._refused:
            self._refused, self._disk_tight = True, True
            log.warning("disk full: the telemetry lane keeps its size from now on; each new batch replaces the oldest")
        if self._tight_bytes is None:
            self._tight_bytes = self._ledger.bytes_used("telemetry")
        return self.drop_oldest_telemetry(DISK_FULL, skip)

    def drop_oldest_telemetry(self, reason: str, skip: Callable[[str], bool] = lambda key: False) -> bool:
        """Drop the oldest telemetry record not in flight (nor ``skip``-ped); False if there is none
        (or the delete itself fails)."""
        entry = self._ledger.oldest_free("telemetry", skip)
        return entry is not None and self._drop_on_any_disk(entry.key, reason)

    def _drop_on_any_disk(self, key: str, reason: str) -> bool:
        """Drop one record; a delete refused by a full file system is tried again after each step
        of the disk reserve given back. False if it cannot be deleted (logged)."""
        while True:
            try:
                return self._drop(key, reason)
            except DiskFull as exc:
                if not self._reserve.release():
                    log.error("cannot drop %s (the disk reserve is used up): %s", key, exc)
                    return False
            except StorageError as exc:
                log.error("cannot drop %s: %s", key, exc)
                return False

    def expire(self) -> int:
        """Drop records older than their lane's ``max_age_s`` (never records in flight) as
        ``expired``; returns how many."""
        now = self._clock_ms()
        removed = 0
        for lane in LANES:
            max_age = self._budgets[lane].max_age_s
            if max_age <= 0:
                continue
            cutoff = now - max_age * 1000
            for entry in self._ledger.entries(lane):
                if entry.created_ms > cutoff:
                    break
                if self._ledger.is_leased(entry.key):
                    continue
                if not self._drop_on_any_disk(entry.key, EXPIRED):
                    break  # the disk refuses (logged): the next pass tries again
                removed += 1
        return removed

    def check_control(self) -> None:
        used, budget = self._ledger.bytes_used("control"), self._budgets["control"].max_bytes
        over = used > budget
        if over and not self.control_over_budget:
            log.error("control lane holds %d bytes, over its %d-byte budget: control records are never "
                      "dropped for capacity; is the uplink down?", used, budget)
        self.control_over_budget = over

    def _check_disk(self, incoming: int) -> None:
        """At most once a second (statvfs is cheap but not free): grow the disk reserve back if
        there is room, and note whether free space minus ``incoming`` is below ``min_free_bytes``."""
        now = time.monotonic()
        if now - self._free_checked < _FREE_CHECK_S:
            return
        self._free_checked = now
        free = self.free_disk_bytes()
        self._reserve.refill(free)
        if self._refused and self._reserve.whole() and free > RESERVE_STEP_BYTES:  # the file system has room again
            self._refused = False
        tight = self._refused or (self._min_free > 0 and free - incoming < self._min_free)
        if tight != self._disk_tight:
            log.warning("disk %s: %d bytes free, headroom %d", "nearly full" if tight else "has room again",
                        free, self._min_free)
        self._disk_tight = tight
        if not tight:
            self._tight_bytes = None

    def free_disk_bytes(self) -> int:
        try:
            return shutil.disk_usage(self._dir).free
        except OSError:
            return 0
