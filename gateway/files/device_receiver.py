"""What the gateway does with each device file message: synchronous, one message at a time, on
the intake's worker thread (:mod:`gateway.files.device_intake`). Each call returns the status
messages to publish (topic, payload); every refusal is counted by reason in :attr:`rejected`.

A manifest opens an upload (``accepted``), or, for one under way, is a question (``missing``), or,
for one handed on already, is answered ``complete`` again; a device that had
``max_files_per_hour`` files handed on (or under way) in the last hour is refused ``busy`` until
the oldest is an hour old (kept in memory: a restart starts the count over). A chunk is written at its offset; the
last one triggers the whole-file check and the hand-off to ``on_file``. A chunk of an unknown
upload is answered ``missing`` with ``manifest: true`` (at most once a second per file).
"""

from __future__ import annotations

import errno
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.protocol.files import BAD_CHUNK, BAD_ID, CONFLICT, NO_SPACE, REJECT_REASONS, UNKNOWN_FILE, FileRejected
from gateway.files.device_contract import (
    DeviceFileTopics,
    DeviceManifest,
    FileMessage,
    State,
    decode_device_manifest,
    encode_status,
    ids_valid,
)
from gateway.files.device_staging import DeviceUpload, done_manifest, forget_done, mark_done

log = logging.getLogger(__name__)

# Refusal reasons beyond the protocol's (bridge.protocol.files.REJECT_REASONS); docs/OPERATIONS.md.
DISABLED = "disabled"  # files.device_uploads = false
BUSY = "busy"  # the device has MAX_OPEN_PER_DEVICE uploads under way, or sent max_files_per_hour in the last hour
EXPIRED = "expired"  # no chunk for files.device_upload_timeout_s
OVERFLOW = "overflow"  # the intake queue was full: the message was dropped (the device asks again)
IO_ERROR = "io_error"  # the disk failed otherwise
DEVICE_FILE_REASONS = (*REJECT_REASONS, DISABLED, BUSY, EXPIRED, OVERFLOW, IO_ERROR)
MAX_OPEN_PER_DEVICE = 8
ASK_EVERY_S = 1.0  # unsolicited answers (chunk of an unknown file, uploads disabled) per file, at most

OnFile = Callable[[Path, str, str, Mapping[str, Any], str], None]
"""``on_file(path, name, content_type, meta, device)``: take the verified file at ``path`` (move or
copy it; what is left there afterwards is deleted). May raise ``FileRejected`` (its reason goes
to the device) or ``OSError``."""
Status = tuple[str, bytes]


@dataclass(frozen=True)
class Limits:
    enabled: bool  # files.device_uploads
    max_file_bytes: int  # files.max_device_file_bytes
    max_disk_bytes: int  # files.max_disk_bytes (shared by every transfer)
    timeout_s: float  # files.device_upload_timeout_s
    max_files_per_hour: int = 60  # files.max_device_files_per_hour (0: no limit)


class DeviceReceiver:
    """Device uploads under ``root`` (``{files_dir}/devices``): one directory per device."""

    def __init__(self, root: Path, topics: DeviceFileTopics, limits: Limits, on_file: OnFile,
                 used_bytes: Callable[[], int], clock: Callable[[], float] = time.time) -> None:
        self.root, self.topics, self.limits = root, topics, limits
        self._on_file, self._used_bytes, self._clock = on_file, used_bytes, clock
        self._open: dict[tuple[str, str], DeviceUpload] = {}
        self._asked: dict[tuple[str, str], float] = {}
        self._handed: dict[str, deque[float]] = {}  # per device: when its files of the last hour were handed on
        self.rejected: Counter[str] = Counter()
        self.files = self.chunks = self.duplicates = self.bytes = 0

    @property
    def under_way(self) -> int:
        return len(self._open)

    def load(self) -> None:
        """Pick up every upload under way on disk (after a restart)."""
        for device_dir in sorted(self.root.glob("*")) if self.root.is_dir() else []:
            for file_id in DeviceUpload.under_way(device_dir):
                upload = DeviceUpload.load(device_dir, file_id)
                if upload is not None:
                    self._open[(device_dir.name, file_id)] = upload

    def handle(self, msg: FileMessage, payload: bytes) -> list[Status]:
        if not ids_valid(msg):
            self.rejected[BAD_ID] += 1
            return []
        if not self.limits.enabled:
            return self._unsolicited(msg, "failed", DISABLED)
        try:
            if msg.part == "manifest":
                return self._manifest(msg, payload)
            return self._chunk(msg, payload)
        except FileRejected as exc:
            self._drop(msg)
            return self._failed(msg, exc.reason, str(exc))
        except OSError as exc:
            log.warning("device upload %s/%s: %s", msg.device, msg.file_id, exc)
            self._drop(msg)
            return self._failed(msg, NO_SPACE if exc.errno == errno.ENOSPC else IO_ERROR, str(exc))

    # -- manifests --------------------------------------------------------------------------------

    def _manifest(self, msg: FileMessage, payload: bytes) -> list[Status]:
        manifest = decode_device_manifest(payload, self.limits.max_file_bytes)
        key, work_dir = (msg.device, msg.file_id), self.root / msg.device
        upload = self._open.get(key)
        if upload is not None and upload.manifest == manifest:
            if upload.complete:  # every chunk was in when the gateway stopped: finish it now
                return self._finish(msg, upload)
            return [self._status(msg, "missing", upload.missing())]
        if upload is None and done_manifest(work_dir, msg.file_id) == manifest:
            self.duplicates += 1
            return [self._status(msg, "complete")]
        if upload is not None:  # the device reuses the id for another file: the new one wins
            self.rejected[CONFLICT] += 1
            self._drop(msg)
        open_now = sum(1 for device, _ in self._open if device == msg.device)
        if open_now >= MAX_OPEN_PER_DEVICE:
            raise FileRejected(BUSY, f"{msg.device} has {MAX_OPEN_PER_DEVICE} uploads under way")
        hourly = self.limits.max_files_per_hour
        if hourly and open_now + self._handed_lately(msg.device) >= hourly:
            raise FileRejected(BUSY, f"{msg.device} sent {hourly} files in the last hour (files under way included)")
        used = self._used_bytes()
        if used + manifest.size > self.limits.max_disk_bytes:
            raise FileRejected(NO_SPACE, f"{manifest.size} bytes do not fit: {used} of "
                                         f"{self.limits.max_disk_bytes} in use by transfers")
        forget_done(work_dir, msg.file_id)
        upload = self._open[key] = DeviceUpload.open(work_dir, msg.file_id, manifest)
        if upload.complete:  # an empty file
            return self._finish(msg, upload)
        return [self._status(msg, "accepted", upload.missing())]

    # -- chunks -----------------------------------------------------------------------------------

    def _chunk(self, msg: FileMessage, payload: bytes) -> list[Status]:
        upload = self._open.get((msg.device, msg.file_id))
        if upload is None:
            if done_manifest(self.root / msg.device, msg.file_id) is not None:
                self.duplicates += 1  # a late copy of a chunk of a file handed on already
                return []
            self.rejected[UNKNOWN_FILE] += 1
            return self._unsolicited(msg, "missing")
        if msg.index < 0:
            self.rejected[BAD_CHUNK] += 1
            return []
        try:
            written = upload.write(msg.index, payload)
        except FileRejected as exc:
            self.rejected[exc.reason] += 1  # the upload goes on: the device may still send it right
            return []
        if not written:
            self.duplicates += 1
            return []
        self.chunks += 1
        self.bytes += len(payload)
        return self._finish(msg, upload) if upload.complete else []

    def _finish(self, msg: FileMessage, upload: DeviceUpload) -> list[Status]:
        # a refusal below (hash_mismatch, or from on_file) reaches handle(): it drops the upload
        path, m = upload.verify(), upload.manifest
        self._on_file(path, m.name, m.content_type, m.meta, msg.device)
        path.unlink(missing_ok=True)
        del self._open[(msg.device, msg.file_id)]
        mark_done(upload.work_dir, msg.file_id, m)
        self._handed.setdefault(msg.device, deque()).append(self._clock())
        self.files += 1
        log.info("device %s sent %r (%d bytes)", msg.device, m.name, m.size)
        return [self._status(msg, "complete")]

    # -- housekeeping -----------------------------------------------------------------------------

    def expire(self) -> int:
        """Drop uploads idle for ``limits.timeout_s`` and forget files handed on that long ago."""
        cutoff = self._clock() - self.limits.timeout_s
        expired = 0
        for key, upload in list(self._open.items()):
            if _last_change(upload) < cutoff:
                self._drop(FileMessage("manifest", *key))
                expired += 1
        for done in self.root.glob("*/*.done") if self.root.is_dir() else []:
            if _mtime(done) < cutoff:
                done.unlink(missing_ok=True)
        self.rejected[EXPIRED] += expired
        return expired

    def _handed_lately(self, device: str) -> int:
        """How many files of ``device`` were handed on in the last hour."""
        times = self._handed.get(device)
        cutoff = self._clock() - 3600.0
        while times and times[0] <= cutoff:
            times.popleft()
        if times is not None and not times:
            del self._handed[device]
        return len(times or ())

    def _drop(self, msg: FileMessage) -> None:
        upload = self._open.pop((msg.device, msg.file_id), None)
        if upload is not None:
            DeviceUpload.remove(upload.work_dir, upload.file_id)

    # -- answers ----------------------------------------------------------------------------------

    def _status(self, msg: FileMessage, state: State, missing: list[int] | None = None, reason: str = "",
                manifest: bool = False) -> Status:
        return self.topics.status_topic(msg.device, msg.file_id), encode_status(state, missing, reason,
                                                                                manifest=manifest)

    def _failed(self, msg: FileMessage, reason: str, detail: str) -> list[Status]:
        self.rejected[reason] += 1
        log.info("device upload %s/%s refused: %s", msg.device, msg.file_id, detail[:200])
        return [self._status(msg, "failed", reason=reason)]

    def _unsolicited(self, msg: FileMessage, state: State, reason: str = "") -> list[Status]:
        """An answer the device did not ask for (at most once per ``ASK_EVERY_S`` per file)."""
        key, now = (msg.device, msg.file_id), time.monotonic()
        if reason:
            self.rejected[reason] += 1
        if now - self._asked.get(key, -ASK_EVERY_S) < ASK_EVERY_S:
            return []
        if len(self._asked) > 10_000:
            self._asked.clear()
        self._asked[key] = now
        return [self._status(msg, state, [], reason, manifest=state == "missing")]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _last_change(upload: DeviceUpload) -> float:
    """When a chunk last arrived (or the upload opened)."""
    return max(_mtime(upload.work_dir / f"{upload.file_id}.have"), _mtime(upload.work_dir / f"{upload.file_id}.json"))


__all__ = ["BUSY", "DEVICE_FILE_REASONS", "DISABLED", "EXPIRED", "IO_ERROR", "OVERFLOW", "DeviceManifest",
           "DeviceReceiver", "Limits", "OnFile", "Status"]
