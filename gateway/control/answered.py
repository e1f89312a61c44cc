"""The commands the gateway has settled, remembered across restarts.

A command is settled once the gateway answered it itself (rejected, expired, undeliverable) or
forwarded it to its device (which then answers). Its ``(device, id)`` goes into an append-only
file in the data directory (one JSON line each), so a command that comes again after a restart
(a QoS 1 redelivery, or a retained command the broker hands out on every subscribe) is
recognised and not answered a second time. The newest ``capacity`` entries are kept; the file is
rewritten (atomically) once it holds twice that many lines.

A line is written and flushed before the answer leaves the router, without an fsync: a gateway
process that is killed keeps it (the kernel has it); only a power cut can lose the last few.
A file that cannot be read or written is logged and counted; the gateway then remembers in memory
only, and never fails a command for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

from gateway.atomic_file import atomic_write

log = logging.getLogger(__name__)

CommandKey = tuple[str, str | int]
DEFAULT_CAPACITY = 50_000


def _key(line: str) -> CommandKey | None:
    try:
        data: Any = json.loads(line)
    except ValueError:
        return None
    if (isinstance(data, list) and len(data) == 2 and isinstance(data[0], str)
            and isinstance(data[1], (str, int)) and not isinstance(data[1], bool)):
        return data[0], data[1]
    return None


class AnsweredCommands:
    """``(device, id)`` of settled commands; ``path`` None keeps them in memory only."""

    def __init__(self, path: Path | None, capacity: int = DEFAULT_CAPACITY) -> None:
        self.path = path
        self.capacity = capacity
        self._keys: OrderedDict[CommandKey, None] = OrderedDict()
        self._file: IO[str] | None = None
        self._lines = 0
        self.errors = 0  # file problems (logged); the gateway then remembers in memory only
        self.skipped_lines = 0  # unreadable lines found at load (a torn last line after a crash)

    def open(self) -> None:
        """Load the file (if any) and open it for appending."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                with self.path.open(encoding="utf-8", errors="replace") as f:
                    for line in f:
                        self._lines += 1
                        key = _key(line)
                        if key is None:
                            self.skipped_lines += 1
                        else:
                            self._remember(key)
            if self._lines > self.capacity or self.skipped_lines:  # a torn last line must not swallow the next
                self._rewrite()
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            self._failed("read", exc)

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self._failed("close", exc)
            self._file = None

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: CommandKey) -> bool:
        return key in self._keys

    def add(self, key: CommandKey) -> None:
        """Remember ``key`` (settled now); written and flushed before this returns."""
        if key in self._keys:
            return
        self._remember(key)
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(list(key), separators=(",", ":")) + "\n")
            self._file.flush()
            self._lines += 1
            if self._lines >= 2 * self.capacity:
                self._file.close()
                self._file = None
                self._rewrite()
                self._file = self.path.open("a", encoding="utf-8") if self.path else None
        except OSError as exc:
            self._failed("write", exc)

    def _remember(self, key: CommandKey) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)

    def _rewrite(self) -> None:
        """Replace the file with the kept keys only (a crash leaves the old file or the new one)."""
        assert self.path is not None
        body = "".join(json.dumps(list(key), separators=(",", ":")) + "\n" for key in self._keys)
        atomic_write(self.path, body.encode(), mode=0o600)
        self._lines = len(self._keys)

    def _failed(self, what: str, exc: OSError) -> None:
        self.errors += 1
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        log.error("cannot %s the answered-commands file %s: %s (remembering in memory only)",
                  what, self.path, exc.strerror or exc)
