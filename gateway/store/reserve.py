"""The disk reserve: a preallocated file in the buffer directory, given back a step at a time when
the file system is full, so that the oldest records can still be deleted.

On a full file system SQLite refuses deletes as well as inserts (a delete writes to the
write-ahead log, which may need to grow). Without room to delete, the buffer could only lose the
newest batches. The reserve holds :data:`RESERVE_BYTES` of real blocks; when a delete is refused
for lack of space, one :data:`RESERVE_STEP_BYTES` step is given back (the file is truncated) and
the delete is tried again. Once the file system has room again (at least the missing part plus one
step free), the reserve grows back to its full size.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE_FILE = "reserve.bin"
RESERVE_BYTES = 8 * 1024 * 1024
RESERVE_STEP_BYTES = 1024 * 1024


class Reserve:
    def __init__(self, path: Path, size: int = RESERVE_BYTES, step: int = RESERVE_STEP_BYTES) -> None:
        self._path = path
        self._size = size
        self._step = step
        self._held: int | None = None  # bytes the file holds now (None: not looked at yet)
        self.released = 0  # steps given back to the file system since start

    def held(self) -> int:
        """How many bytes the reserve holds now."""
        if self._held is None:
            try:
                self._held = self._path.stat().st_size
            except OSError:
                self._held = 0
        return self._held

    def whole(self) -> bool:
        """The reserve holds its full size."""
        return self.held() >= self._size

    def release(self) -> bool:
        """Give one step back to the file system; False if the reserve is empty (or cannot shrink)."""
        held = self.held()
        if held <= 0:
            return False
        target = max(0, held - self._step)
        try:
            os.truncate(self._path, target)
        except OSError as exc:
            log.error("cannot shrink the disk reserve %s: %s", self._path, exc)
            return False
        self._held = target
        self.released += 1
        log.warning("disk full: gave back %d bytes of the disk reserve (%d left) to delete the oldest records",
                    held - target, target)
        return True

    def refill(self, free_bytes: int) -> None:
        """Grow the reserve back towards its size while the file system keeps at least one step
        free beside it (``free_bytes``: free space now)."""
        held = self.held()
        grow = min(self._size - held, free_bytes - self._step)
        if grow <= 0:
            return
        try:
            with open(self._path, "ab") as f:
                os.posix_fallocate(f.fileno(), 0, held + grow)
        except OSError as exc:  # e.g. the disk filled meanwhile: try again later
            log.debug("disk reserve %s not grown: %s", self._path, exc)
            self._held = None
            return
        self._held = held + grow
