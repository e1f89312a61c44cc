"""What the downloads take over from the disk at start: the transfers under way in
``files/incoming`` (:class:`Transfer`, each with how long it has been idle, read from the disk so a
restart does not make an abandoned transfer young again) and the ones a crash left installed but not
yet recorded (recorded in the installed log, their work files removed)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bridge.transfer.assembly import Assembly, Finished
from gateway.files.installed import Installed, InstalledLog

log = logging.getLogger(__name__)


@dataclass
class Transfer:
    """One download under way and the timers the downloads keep for it."""

    assembly: Assembly
    last_progress: float
    stall_s: float
    active_at: float  # opened or a chunk written (the clock's time): idle past timeout_s, it expires
    unreported: int = 0  # chunks written since the last full `missing` list
    whole_mismatches: int = 0  # whole-file hash mismatches: the first asks for every chunk again, the second fails


def take_over(incoming: Path, inbox: Path, installed: InstalledLog, *, now: float, wall: Callable[[], float],
              stall_s: float) -> dict[str, Transfer]:
    """Record the downloads a crash left installed, and return the transfers under way (blocking)."""
    for finished in Assembly.finished(incoming):
        _record_finished(incoming, inbox, installed, finished)
    transfers = {}
    for assembly in Assembly.under_way(incoming):
        try:
            idle = max(0.0, wall() - assembly.updated_at())
        except OSError:
            idle = 0.0
        transfers[assembly.id] = Transfer(assembly, now, stall_s, now - idle)
    return transfers


def _record_finished(incoming: Path, inbox: Path, installed: InstalledLog, f: Finished) -> None:
    m = f.manifest
    try:
        path = f.path.relative_to(inbox.absolute()).as_posix()
    except ValueError:  # files.inbox_dir changed since
        path = f.path.as_posix()
    installed.add(Installed(m.id, m.name, path, m.sha256, m.size, m.device))
    Assembly.remove(incoming, m.id)
    log.info("downloads: %s was installed as %s before a restart", m.id, path)
