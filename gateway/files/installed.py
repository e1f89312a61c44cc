"""The downloads already installed: a small persisted record, so a manifest that arrives again for
one of them (the pusher restarted, or missed the first answer) is answered ``received`` again
instead of starting the transfer over.

A JSON file (``installed.json`` in the files directory) rewritten atomically after each install,
holding the last ``limit`` entries (oldest forgotten first). A file that cannot be read is logged
and started afresh: the worst case is one file received twice.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.atomic_file import atomic_write

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 1000


@dataclass(frozen=True)
class Installed:
    id: str
    name: str
    path: str  # relative to the inbox
    sha256: str
    size: int
    device: str | None = None


class InstalledLog:
    """The last ``limit`` downloads installed, by id (see the module doc)."""

    def __init__(self, path: Path, limit: int = DEFAULT_LIMIT) -> None:
        self.path = path
        self.limit = limit
        self._entries: OrderedDict[str, Installed] = OrderedDict()

    def open(self) -> None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            entries = [Installed(**item) for item in raw]
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError) as exc:
            log.error("downloads: %s cannot be read (%s); starting a new record", self.path, exc)
            return
        self._entries = OrderedDict((e.id, e) for e in entries[-self.limit:])

    def get(self, file_id: str) -> Installed | None:
        return self._entries.get(file_id)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: Installed) -> None:
        """Record ``entry`` and write the record (blocking: call it off the event loop)."""
        self._entries.pop(entry.id, None)
        self._entries[entry.id] = entry
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps([asdict(e) for e in self._entries.values()]).encode(), 0o644)
