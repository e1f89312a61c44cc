"""What the buffer may keep: each lane's byte budget and age limit, and the disk's free-space headroom.

Telemetry over its byte budget (or on a disk below its headroom) drops its oldest records that are
not in flight, each one through ``drop`` (which removes it and reports it, so it is counted the
moment it leaves, even if the write that needed the room then fails). The control lane is never
dropped for capacity, only flagged (:attr:`Retention.control_over_budget`). Records older than
their lane's ``max_age_s`` expire (never while in flight).
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
        self.control_over_budget = False

    def make_room(self, lane: Lane, incoming: int) -> None:
        """Before ``incoming`` bytes are appended: drop the oldest telemetry while the lane would
        exceed its budget (or, on a disk below its headroom, grow at all)."""
        if lane != "telemetry":
            return
        limit, reason = self._budgets[lane].max_bytes, BUFFER_OVERFLOW
        if self._disk_is_tight(incoming):  # the disk is nearly full: telemetry may not grow
            limit, reason = min(limit, self._ledger.bytes_used(lane)), DISK_FULL
        while self._ledger.bytes_used(lane) + incoming > limit:
            if not self.drop_oldest_telemetry(reason):
                break

    def drop_oldest_telemetry(self, reason: str, skip: Callable[[str], bool] = lambda key: False) -> bool:
        """Drop the oldest telemetry record not in flight (nor ``skip``-ped); False if there is none
        (or the delete itself fails)."""
        entry = self._ledger.oldest_free("telemetry", skip)
        if entry is None:
            return False
        try:
            return self._drop(entry.key, reason)
        except StorageError as exc:
            log.error("cannot drop %s to make room: %s", entry.key, exc)
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
                if not self._ledger.is_leased(entry.key) and self._drop(entry.key, EXPIRED):
                    removed += 1
        return removed

    def check_control(self) -> None:
        used, budget = self._ledger.bytes_used("control"), self._budgets["control"].max_bytes
        over = used > budget
        if over and not self.control_over_budget:
            log.error("control lane holds %d bytes, over its %d-byte budget: control records are never "
                      "dropped for capacity; is the uplink down?", used, budget)
        self.control_over_budget = over

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
