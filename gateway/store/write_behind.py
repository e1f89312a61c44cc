"""Write-behind: telemetry batches kept in memory while the uplink is up, and the sequence
numbers reserved on disk for them.

With ``delay_s`` > 0, a telemetry batch appended while the link is up is *staged*: its payload
stays in memory and reaches the disk only if it is not acknowledged within ``delay_s`` (or the
link drops, or the buffer closes). On a healthy link the disk is hardly written at all. So that a
crash cannot hand out a number a staged batch (maybe already delivered) had, sequence numbers are
reserved on disk (``reserve:{lane}``) :data:`SEQ_RESERVE` at a time before they are used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bridge.uplink.store import LANES, Lane
from gateway.errors import StorageError
from gateway.observe.accounting import DISK_FULL
from gateway.store.rows import reserve_key

log = logging.getLogger(__name__)

SEQ_RESERVE = 64  # with write-behind, sequence numbers are reserved on disk this many at a time

Write = Callable[[Mapping[str, object]], None]  # rows in one transaction; StorageError on failure
Drop = Callable[[str, str], bool]  # remove a record and report it (see retention.Drop)


@dataclass
class _Staged:
    payload: bytes
    at: float  # monotonic time it was staged


class WriteBehind:
    def __init__(self, delay_s: float, write: Write, drop: Drop, clock: Callable[[], float] = time.monotonic) -> None:
        self._delay_s = delay_s
        self._write = write
        self._drop = drop
        self._clock = clock
        self._link_up = False
        self._staged: dict[str, _Staged] = {}  # in sequence order
        self.reserved: dict[Lane, int] = dict.fromkeys(LANES, 0)  # highest seq reserved on disk

    def applies(self, lane: Lane) -> bool:
        """Whether a record of ``lane`` appended now is staged instead of written."""
        return lane == "telemetry" and self._delay_s > 0 and self._link_up

    def reserve(self, lane: Lane, seq: int) -> None:
        """Make sure ``seq`` is reserved on disk before it is used (keeps numbers unique across a crash)."""
        if seq > self.reserved[lane]:
            self._write({reserve_key(lane): seq + SEQ_RESERVE - 1})
            self.reserved[lane] = seq + SEQ_RESERVE - 1

    def stage(self, key: str, payload: bytes) -> None:
        self._staged[key] = _Staged(payload, self._clock())

    def payload(self, key: str) -> bytes | None:
        staged = self._staged.get(key)
        return None if staged is None else staged.payload

    def is_staged(self, key: str) -> bool:
        return key in self._staged

    def unstage(self, key: str) -> bool:
        """Forget a staged record (acknowledged or dropped); False if it was not staged."""
        return self._staged.pop(key, None) is not None

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
        """Write staged records older than ``delay_s`` (all with ``force``) to disk in one
        transaction; returns how many. On failure they stay staged and are tried again later,
        except when ``closing``: then each one that cannot be written is dropped and counted."""
        cutoff = self._clock() - self._delay_s
        due = [key for key, staged in self._staged.items() if force or staged.at <= cutoff]
        if not due:
            return 0
        try:
            self._write({key: self._staged[key].payload for key in due})
        except StorageError:
            if not closing:
                raise
            return self._persist_one_by_one(due)
        for key in due:
            del self._staged[key]
        return len(due)

    def _persist_one_by_one(self, due: list[str]) -> int:
        """Closing on a (nearly) full disk: write what fits; what does not is counted as dropped
        (``disk_full``) instead of vanishing with the process."""
        written = 0
        for key in due:
            try:
                self._write({key: self._staged[key].payload})
            except StorageError as exc:
                log.error("batch %s could not be written at stop: %s", key, exc)
                self._drop(key, DISK_FULL)
                continue
            del self._staged[key]
            written += 1
        return written
