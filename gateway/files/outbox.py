"""The outbox: files dropped there (written elsewhere or under a dot-name, then renamed in) are
planned (:func:`bridge.transfer.plan.plan_file`), recorded in ``uploads.db`` and moved to
``sending/{id}``, where the :class:`~gateway.files.uploader.Uploader` takes them.

Names starting with ``.`` and anything that is not a regular file are left alone. A file with a
bad name or above ``files.max_file_bytes`` (or above the whole ``files.max_disk_bytes``) is moved to
``outbox/.rejected/`` beside a ``{name}.reason`` text file and counted by reason; so is a file whose
upload failed or expired. Only the newest ``files.rejected_keep`` files stay there. A file that does
not fit the disk budget beside the transfers under way waits in the outbox. ``.{name}.meta``
(JSON: ``content_type``, ``meta``), written by ``edge-gateway files send`` before it renames the
file in, gives the manifest its content type and metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.protocol.files import MALFORMED, TOO_LARGE, FileRejected, Manifest
from bridge.transfer.plan import plan_file
from gateway.config_sections import FilesSection
from gateway.files.counters import UploadCounters
from gateway.files.uploader import Uploader
from gateway.files.uploads_db import FilesError, new_row

log = logging.getLogger(__name__)

REJECTED = ".rejected"
REJECTED_KEEP = 100


def meta_path(outbox: Path, name: str) -> Path:
    return outbox / f".{name}.meta"


def _read_meta(outbox: Path, name: str) -> dict[str, Any]:
    try:
        obj = json.loads(meta_path(outbox, name).read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise FileRejected(MALFORMED, f"{meta_path(outbox, name).name}: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("meta", {}), dict) \
            or not isinstance(obj.get("content_type", ""), str):
        raise FileRejected(MALFORMED, f"{meta_path(outbox, name).name} is not an object of content_type and meta")
    return obj


def set_aside(path: Path, outbox: Path, name: str, reason: str, keep: int = REJECTED_KEEP) -> None:
    """Move ``path`` to ``outbox/.rejected/`` (under ``name``, made unique) with a ``.reason`` file;
    only the newest ``keep`` files stay there (with their ``.reason``)."""
    target_dir = outbox / REJECTED
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / name
        n = 1
        while target.exists():
            target, n = target_dir / f"{name}.{n}", n + 1
        os.replace(path, target)
        target.with_name(target.name + ".reason").write_text(reason + "\n", "utf-8")
    except OSError as exc:
        log.error("could not set %s aside (%s): %s", path, reason, exc)
    prune_rejected(target_dir, keep)


def prune_rejected(rejected: Path, keep: int) -> int:
    """Delete all but the newest ``keep`` files of ``rejected`` (and their ``.reason``); returns how many."""
    try:
        files = [(e.stat().st_mtime_ns, e.name) for e in os.scandir(rejected)
                 if e.is_file(follow_symlinks=False) and not e.name.endswith(".reason")]
    except OSError as exc:
        log.warning("cannot read %s: %s", rejected, exc)
        return 0
    old = sorted(files, reverse=True)[keep:]
    for _, name in old:
        for gone in (rejected / name, rejected / f"{name}.reason"):
            with contextlib.suppress(OSError):
                gone.unlink()
    if old:
        log.info("%d old file(s) deleted from %s (files.rejected_keep = %d)", len(old), rejected, keep)
    return len(old)


class Outbox:
    def __init__(self, outbox_dir: Path, cfg: FilesSection, uploader: Uploader, counters: UploadCounters,
                 other_bytes: Callable[[], int] = lambda: 0) -> None:
        """``other_bytes``: what the other transfers (downloads, device uploads) hold on disk; the
        budget ``files.max_disk_bytes`` is for all of them together."""
        self.dir = outbox_dir
        self._cfg = cfg
        self._other_bytes = other_bytes
        self.uploader = uploader
        self.counters = counters
        self.waiting_for_space = 0  # files that wait for disk budget at the last scan

    def recover(self) -> None:
        """At start: a file in ``sending/`` without a row in ``uploads.db`` (its row lost in a power cut)
        goes back to the outbox to be planned again."""
        self.dir.mkdir(parents=True, exist_ok=True)
        sending = self.uploader.sending_dir
        for path in sending.iterdir() if sending.is_dir() else ():
            if path.name not in self.uploader.transfers and path.is_file():
                log.warning("sending/%s has no upload state: back to the outbox", path.name)
                os.replace(path, self.dir / f"recovered-{path.name}")

    async def scan(self) -> int:
        """One pass over the outbox; returns how many files were taken."""
        try:
            entries = sorted((e for e in os.scandir(self.dir) if not e.name.startswith(".")),
                             key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot read the outbox %s: %s", self.dir, exc)
            return 0
        taken, self.waiting_for_space = 0, 0
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            try:
                size = entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue  # gone meanwhile
            taken += await self._take(Path(entry.path), size)
        return taken

    async def _take(self, path: Path, size: int) -> int:
        name = path.name
        try:
            limit = min(self._cfg.max_file_bytes, self._cfg.max_disk_bytes)
            if size > limit:
                raise FileRejected(TOO_LARGE, f"{size} bytes, the limit is {limit}")
            if size + self.uploader.bytes_on_disk + self._other_bytes() > self._cfg.max_disk_bytes:
                self.waiting_for_space += 1
                return 0
            extra = _read_meta(self.dir, name)
            manifest = await asyncio.to_thread(
                plan_file, path, chunk_size=self._cfg.chunk_bytes, max_size=limit,
                max_manifest_bytes=self._cfg.max_manifest_bytes,
                content_type=extra.get("content_type") or "application/octet-stream", meta=extra.get("meta"))
            self.queue(path, manifest)
        except FileRejected as exc:
            self.counters.rejected[exc.reason] += 1
            log.warning("outbox file %r refused: %s", name, exc)
            set_aside(path, self.dir, name, f"{exc.reason}: {exc}", self._cfg.rejected_keep)
            meta_path(self.dir, name).unlink(missing_ok=True)
            return 0
        except (OSError, FilesError) as exc:  # gone meanwhile, unreadable, or the state is not writable
            self.counters.not_taken += 1
            log.warning("outbox file %r not taken yet: %s", name, exc)
            return 0
        return 1

    def take(self, path: Path, name: str, content_type: str = "application/octet-stream",
             meta: dict[str, Any] | None = None, device: str | None = None) -> str:
        """Queue a whole file from elsewhere on the gateway (a device's upload, say) at once, under
        ``name``; ``path`` is moved (same file system). Returns the file id. Raises
        ``FileRejected`` (refused: bad name, too large), ``OSError`` or ``FilesError`` (not taken:
        ``path`` is left where it was)."""
        manifest = self.plan(path, name, content_type, meta, device)
        self.queue(path, manifest)
        return manifest.id

    def plan(self, path: Path, name: str, content_type: str = "application/octet-stream",
             meta: dict[str, Any] | None = None, device: str | None = None) -> Manifest:
        """The manifest of a file to queue (reads it once: may run in a worker thread). Raises
        ``FileRejected`` or ``OSError``."""
        limit = min(self._cfg.max_file_bytes, self._cfg.max_disk_bytes)
        return plan_file(path, chunk_size=self._cfg.chunk_bytes, name=name, content_type=content_type,
                         meta=meta, device=device, max_size=limit, max_manifest_bytes=self._cfg.max_manifest_bytes)

    def queue(self, path: Path, manifest: Manifest) -> None:
        """Record ``manifest`` and move ``path`` to ``sending/`` (on the event loop). Raises
        ``FilesError`` or ``OSError`` (not taken)."""
        row = new_row(manifest)
        self.uploader.db.insert(row)  # first the row, then the move: recover() handles a crash between
        try:
            os.replace(path, self.uploader.sending_dir / manifest.id)
        except OSError:
            self.uploader.db.finish(row, "failed", "could not move it to sending/")
            raise
        meta_path(self.dir, path.name).unlink(missing_ok=True)
        self.uploader.add(row)
        log.info("file %r queued for upload as %s (%d bytes, %d chunks)", manifest.name, manifest.id,
                 manifest.size, manifest.chunks)

    async def run(self, stop: asyncio.Event, tick: Callable[[], None]) -> None:
        """Scan every ``files.scan_interval_s`` and run ``tick`` (the uploader's timers) until ``stop``."""
        while not stop.is_set():
            try:
                await self.scan()
                tick()
            except Exception:  # the one blind except of this loop: logged and counted, the loop goes on
                log.exception("outbox scan failed")
                self.counters.scan_errors += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self._cfg.scan_interval_s)

