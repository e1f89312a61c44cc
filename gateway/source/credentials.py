"""The credential files the broker enforces, reloaded while the gateway runs.

The password file and the revoked-serials list are checked every ``reload_interval_s`` (their
size and modification time) and at once on SIGHUP. A reload that finds a bad file keeps the
credentials in force, logs the error and counts it; the next good version is taken. Each reload
reports which devices lost their password and which serials became revoked, so the broker can
close those connections at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import CredentialsError
from gateway.source.passwords import PasswordVerifier, read_password_file
from gateway.source.pki import read_revoked

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int] | None


def _stamp(path: Path | None) -> Stamp:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass(frozen=True)
class Changes:
    removed: frozenset[str] = frozenset()
    revoked: frozenset[str] = frozenset()


class CredentialStore:
    def __init__(self, password_file: Path | None, revoked_file: Path | None) -> None:
        self.password_file = password_file
        self.revoked_file = revoked_file
        self.verifier = PasswordVerifier()
        self.revoked: frozenset[str] = frozenset()
        self.reloads = 0
        self.reload_errors = 0
        self._stamps: tuple[Stamp, Stamp] = (None, None)

    def load(self) -> Changes:
        """Read both files now. Raises :class:`CredentialsError` (the caller decides: at start the
        gateway refuses to run, later the old credentials stay in force)."""
        stamps = (_stamp(self.password_file), _stamp(self.revoked_file))
        entries = read_password_file(self.password_file) if self.password_file else {}
        revoked = frozenset(read_revoked(self.revoked_file)) if self.revoked_file else frozenset()
        removed = self.verifier.devices - entries.keys()
        self.verifier.replace(entries)
        newly = revoked - self.revoked
        self.revoked = revoked
        self._stamps = stamps
        return Changes(removed=frozenset(removed), revoked=newly)

    def changed_on_disk(self) -> bool:
        return (_stamp(self.password_file), _stamp(self.revoked_file)) != self._stamps

    def reload(self) -> Changes | None:
        """Reload; None when a file is bad (logged and counted, the old credentials stay)."""
        try:
            changes = self.load()
        except CredentialsError as exc:
            self.reload_errors += 1
            self._stamps = (_stamp(self.password_file), _stamp(self.revoked_file))  # report each bad version once
            log.error("credentials not reloaded, the previous ones stay in force: %s", exc)
            return None
        self.reloads += 1
        log.info("credentials reloaded: %d devices with a password, %d revoked certificates",
                 len(self.verifier), len(self.revoked))
        return changes

    async def watch(self, stop: asyncio.Event, interval_s: float, wake: asyncio.Event,
                    apply: Callable[[Changes], None]) -> None:
        """Reload when a file changes (polled every ``interval_s``) or ``wake`` is set (SIGHUP)."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                waking = asyncio.ensure_future(wake.wait())
                await asyncio.wait({waking, stopping}, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED)
                waking.cancel()
                forced = wake.is_set()
                wake.clear()
                if forced or self.changed_on_disk():
                    changes = self.reload()
                    if changes is not None:
                        apply(changes)
        finally:
            stopping.cancel()
