"""Is the gateway's wall clock trustworthy yet?

A Raspberry Pi has no real-time clock: until NTP syncs, the wall clock starts at 1970 or at the
last shutdown time (fake-hwclock). Judging a device's timestamp against such a clock rejects good
data, and stamping readings with it gives them a wrong time. :class:`ClockGuard` tells which:

* the wall clock is **unsynced** while it reads before the floor date (baked into the package: no
  real clock can read earlier than the release that is running), or, when ``sync_file`` is set,
  while that file does not exist (systemd-timesyncd creates ``/run/systemd/timesync/synchronized``);
* a **jump** is a change of more than ``jump_s`` between the wall clock and the monotonic clock
  (NTP stepping the clock, or an operator setting it); each is counted with its size.

Clocks and the file check are injected, so tests drive every case without touching the host.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

FLOOR_DATE = dt.date(2026, 11, 1)
"""No wall clock reading before this date is real: the package was built after it."""


def date_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp() * 1000)


class ClockGuard:
    def __init__(
        self,
        floor: dt.date = FLOOR_DATE,
        *,
        jump_s: float = 60.0,
        sync_file: str | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        exists: Callable[[str], bool] = os.path.exists,
    ) -> None:
        self.floor_ms = date_ms(floor)
        self._floor = floor
        self._jump_s = jump_s
        self._sync_file = sync_file or None
        self._wall = wall
        self._mono = mono
        self._exists = exists
        self._offset = wall() - mono()
        self.synced = False
        self.jumps = 0
        self.last_jump_s: float | None = None
        self.receive_stamped_unsynced = 0  # readings given the receive time while unsynced
        self.window_not_judged = 0  # readings whose device ts was kept outside the window while unsynced
        self.refresh(first=True)

    def refresh(self, *, first: bool = False) -> None:
        """Re-read the clocks (the processor calls this about once a second)."""
        wall, mono = self._wall(), self._mono()
        offset = wall - mono
        if abs(offset - self._offset) > self._jump_s:
            self.jumps += 1
            self.last_jump_s = round(offset - self._offset, 3)
            log.warning("the wall clock jumped by %+.1f s", self.last_jump_s)
        self._offset = offset
        synced = wall * 1000 >= self.floor_ms and (self._sync_file is None or self._exists(self._sync_file))
        if synced != self.synced or first:
            if synced:
                log.log(logging.WARNING if not first else logging.DEBUG, "the wall clock is synced")
            else:
                log.warning("the wall clock is not synced yet (before %s%s): device timestamps are kept "
                            "unjudged and readings without one are counted as receive_stamped_unsynced",
                            self._floor, f", or {self._sync_file} missing" if self._sync_file else "")
        self.synced = synced

    def trusted(self, recv_ms: int) -> bool:
        """True when a receive time ``recv_ms`` can judge a device's timestamp."""
        return self.synced and recv_ms >= self.floor_ms

    def snapshot(self) -> dict[str, Any]:
        return {
            "synced": self.synced,
            "floor_date": self._floor.isoformat(),
            "sync_file": self._sync_file,
            "jumps": self.jumps,
            "last_jump_s": self.last_jump_s,
            "receive_stamped_unsynced": self.receive_stamped_unsynced,
            "window_not_judged": self.window_not_judged,
        }
