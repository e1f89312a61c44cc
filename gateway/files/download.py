"""Downloads (cloud -> gateway): receive files pushed on ``{prefix}/files/down/{id}/manifest|chunk``,
verify them, install them into the inbox and answer on the control lane (FileStatus, direction
``down``). docs/OPERATIONS.md, "File transfer: downloads".

Each transfer under way is an :class:`~bridge.transfer.assembly.Assembly` in ``files/incoming``;
it survives restarts. What the gateway answers:

- a manifest it refuses (bad name, too large, disk budget used up...) -> ``failed`` with the reason;
- a manifest of a file already installed -> ``received`` again (from :mod:`gateway.files.installed`);
- any other manifest -> ``missing`` with the chunks it still needs (all of them for a new file);
- a chunk it refuses (hash mismatch, wrong offset...) -> counted, and that chunk asked for again;
- a chunk of a file it has no manifest for -> ``missing`` with ``manifest: true`` (the data is
  dropped), at most once per :data:`UNKNOWN_REPEAT_S` per id;
- (these answers to messages of no transfer under way share one token bucket: beyond it they are
  counted as ``unanswered`` and not sent, so junk from the cloud cannot make a record each);
- the whole file verified and installed -> ``received`` with its path relative to the inbox; a
  whole that does not match -> every chunk asked for again, once; the second time ``failed``;
- a transfer that got no chunk for ``timeout_s`` (files.download_timeout_s) -> dropped, ``failed``
  with reason ``expired``;
- on every uplink connect (the first one after a start included), and when a transfer got no
  chunk for ``stall_s`` (doubling up to :data:`STALL_CAP_S` while nothing comes) -> ``missing``;
- chunks dropped because too much waited for the disk -> ``missing`` for them, once the queue is empty;
- chunks written -> ``missing`` (reason ``progress``) after every :data:`PROGRESS_EVERY` chunks,
  or once no chunk came for :data:`PROGRESS_QUIET_S` (a pusher with a smaller window waits for
  it): the pusher keeps at most its window of chunks that the gateway has not confirmed this way,
  so chunks never pile up in the broker's queue for the gateway, where a command would wait behind
  them. Each status is a control record the sink stores: counting chunks, not time, keeps them to
  about one per :data:`PROGRESS_EVERY` chunks on a slow link as on a fast one.

A ``missing`` status says in its ``reason`` why it was sent: ``opened`` (a new manifest),
``manifest`` (a manifest again), ``reconnect``, ``stalled``, ``progress`` (these list every chunk
still missing, and may list chunks still on their way:
a pusher waits a moment before it sends those again), or ``busy``, ``unknown_file`` or the refusal
reason of a chunk (``hash_mismatch``...: those chunks are not coming, send them now).

Messages are queued by the downlink callback and handled one at a time, in arrival order, by
:meth:`Downloads.run`; the disk work (each chunk is written and fdatasync'ed twice, the whole is
read back and hashed) runs in a worker thread so the event loop keeps serving commands and
telemetry meanwhile (bench/download_write_lag.py). One message at a time keeps the chunks of a
file in order and leaves every decision about a transfer to one task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.protocol.files import (
    BAD_ID,
    CHUNK_HEADER,
    CONFLICT,
    NO_SPACE,
    UNKNOWN_FILE,
    FileRejected,
    Manifest,
    decode_chunk,
    decode_manifest,
    to_ranges,
)
from bridge.protocol.records import ControlOut, FileStatus
from bridge.transfer.assembly import Assembly
from gateway.files.download_counters import (
    BUSY,
    DOWNLOAD_REASONS,
    EXPIRED,
    IO_ERROR,
    DownloadCounters,
    UnsolicitedAnswers,
    chunk_index,
)
from gateway.files.download_resume import Transfer, take_over
from gateway.files.installed import Installed, InstalledLog

__all__ = ["DOWNLOAD_REASONS", "STALL_CAP_S", "DownloadCounters", "Downloads"]

log = logging.getLogger(__name__)

STALL_CAP_S = 600.0
UNKNOWN_REPEAT_S = 5.0
QUEUE_MAX_BYTES = 16 * 1024 * 1024  # messages waiting for the disk; beyond, they are dropped (and counted)
# why a `missing` status is sent (its `reason`), besides the refusal reasons of a chunk and BUSY:
OPENED, AGAIN, RECONNECT, STALLED, PROGRESS = "opened", "manifest", "reconnect", "stalled", "progress"
PROGRESS_EVERY = 4  # a `progress` status after this many chunks written since the last one...
PROGRESS_QUIET_S = 0.5  # ...or once the transfer got no chunk this long (a pusher's window below PROGRESS_EVERY)
_HEX = frozenset("0123456789abcdef")


class Downloads:
    """Every download of one gateway (see the module doc). ``offer`` is the downlink's file
    handler; ``run`` the task that handles what it queued."""

    def __init__(self, incoming: Path, inbox: Path, installed: InstalledLog, on_status: ControlOut, *,
                 max_file_bytes: int, max_disk_bytes: int, other_bytes: Callable[[], int] = lambda: 0,
                 stall_s: float = 30.0, timeout_s: float = 7 * 86400.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.incoming, self.inbox, self.installed = incoming, inbox, installed
        self._status = on_status
        self.max_file_bytes, self.max_disk_bytes = max_file_bytes, max_disk_bytes
        self._other_bytes = other_bytes
        self.stall_s, self.timeout_s = stall_s, timeout_s
        self._clock, self._wall = clock, wall
        self._unsolicited = UnsolicitedAnswers(clock)
        self.counters = DownloadCounters()
        self.internal_errors = 0
        self._transfers: dict[str, Transfer] = {}
        self._queue: deque[tuple[str, str, bytes]] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._link_up = False
        self._unknown_asked: dict[str, float] = {}
        self._dropped: dict[str, set[int]] = {}  # chunks dropped while the queue was full, by file

    # -- state ------------------------------------------------------------------------------------

    def open(self) -> None:
        """Take over the transfers an earlier run left under way (before the uplink connects)."""
        self.installed.open()
        self._transfers = take_over(self.incoming, self.inbox, self.installed, now=self._clock(), wall=self._wall,
                                    stall_s=self.stall_s)
        if self._transfers:
            log.info("downloads: %d transfer(s) under way resumed", len(self._transfers))

    def bytes_in_use(self) -> int:
        """Bytes the transfers under way take (their full size: reserved when they start)."""
        return sum(t.assembly.manifest.size for t in self._transfers.values())

    def under_way(self) -> list[Manifest]:
        return [t.assembly.manifest for t in self._transfers.values()]

    def snapshot(self) -> dict[str, Any]:
        c = self.counters
        return {"received": c.received, "received_again": c.received_again, "failed": dict(c.failed),
                "rejected": dict(c.rejected), "chunks": c.chunks, "duplicates": c.duplicates, "bytes": c.bytes,
                "missing_sent": c.missing_sent, "unanswered": c.unanswered, "in_progress": len(self._transfers),
                "bytes_in_use": self.bytes_in_use()}

    # -- from the event loop ------------------------------------------------------------------------

    def offer(self, file_id: str, part: str, payload: bytes) -> None:
        """A message on a download topic (the downlink's handler): queued for :meth:`run`."""
        if len(file_id) != 32 or not set(file_id) <= _HEX:
            self.counters.rejected[BAD_ID] += 1
            return
        if self._queued_bytes + len(payload) > QUEUE_MAX_BYTES:
            self.counters.rejected[BUSY] += 1  # a chunk is asked for again once the queue is empty
            index = chunk_index(payload, file_id) if part == "chunk" else None
            if index is not None:
                self._dropped.setdefault(file_id, set()).add(index)
            return
        self._queue.append((file_id, part, payload))
        self._queued_bytes += len(payload)
        self._wake.set()

    def link_changed(self, up: bool) -> None:
        """The uplink's state; on every connect, a ``missing`` status for each transfer under way."""
        self._link_up = up
        if up:
            now = self._clock()
            for t in self._transfers.values():
                t.last_progress, t.stall_s = now, self.stall_s
                self._ask(t.assembly, why=RECONNECT)

    async def run(self, stop: asyncio.Event) -> None:
        """Handle queued messages in order; check for stalled and expired transfers about once a second."""
        for t in [t for t in self._transfers.values() if t.assembly.complete]:  # a crash before the install
            await self._install(t)
        while not stop.is_set():
            while self._queue:
                file_id, part, payload = self._queue.popleft()
                self._queued_bytes -= len(payload)
                try:
                    await (self._on_manifest if part == "manifest" else self._on_chunk)(file_id, payload)
                except Exception:  # the one catch-all of this loop: a bug must not stop every download
                    self.internal_errors += 1
                    log.exception("downloads: unexpected error on a %s of %s", part, file_id)
            if self._dropped:
                self._ask_dropped()
            due = self._report_progress()
            timeout = min(1.0, self.stall_s) if due is None else max(due, 0.01)
            self._check_stalls()
            await self._expire()
            self._wake.clear()
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            _, pending = await asyncio.wait(waiters, timeout=timeout,
                                            return_when=asyncio.FIRST_COMPLETED)
            for w in pending:
                w.cancel()

    # -- handling -----------------------------------------------------------------------------------

    async def _on_manifest(self, file_id: str, payload: bytes) -> None:
        try:
            manifest = decode_manifest(payload, max_size=self.max_file_bytes)
            if manifest.id != file_id:
                raise FileRejected(BAD_ID, f"manifest of {manifest.id} on the topic of {file_id}")
        except FileRejected as exc:
            self._refuse(file_id, exc)
            return
        done = self.installed.get(manifest.id)
        if done is not None:
            self.counters.received_again += 1
            self._received(done)
            return
        known = self._transfers.get(manifest.id)
        if known is not None:
            if known.assembly.manifest.to_json() | {"created_ms": 0} != manifest.to_json() | {"created_ms": 0}:
                self._refuse(file_id, FileRejected(CONFLICT, "another manifest is under way under this id"))
            else:
                self._ask(known.assembly, why=AGAIN)
            return
        if self.bytes_in_use() + self._other_bytes() + manifest.size > self.max_disk_bytes:
            self._refuse(file_id, FileRejected(NO_SPACE, f"{manifest.size} bytes do not fit files.max_disk_bytes"))
            return
        try:
            assembly = await asyncio.to_thread(Assembly.open, self.incoming, manifest)
        except FileRejected as exc:
            self._refuse(file_id, exc)
            return
        except OSError as exc:
            self._io_failed(manifest.id, exc)
            return
        self._transfers[manifest.id] = Transfer(assembly, self._clock(), self.stall_s, self._clock())
        if assembly.complete:  # an empty file
            await self._install(self._transfers[manifest.id])
        else:
            self._ask(assembly, why=OPENED)

    async def _on_chunk(self, file_id: str, payload: bytes) -> None:
        t = self._transfers.get(file_id)
        if t is None:
            self._unknown_chunk(file_id)
            return
        try:
            written = await asyncio.to_thread(t.assembly.write, decode_chunk(payload))
        except FileRejected as exc:
            self.counters.rejected[exc.reason] += 1
            log.warning("downloads: chunk of %s refused: %s", file_id, exc)
            index = chunk_index(payload, file_id)
            if index is not None and index < t.assembly.manifest.chunks and not t.assembly.has(index):
                self._ask(t.assembly, [index], why=exc.reason)
            return
        except OSError as exc:
            self._io_failed(file_id, exc)
            return
        if not written:
            self.counters.duplicates += 1
            return
        self.counters.chunks += 1
        self.counters.bytes += len(payload) - CHUNK_HEADER.size
        t.last_progress, t.stall_s = self._clock(), self.stall_s
        t.active_at = t.last_progress
        t.unreported += 1
        if t.assembly.complete:
            await self._install(t)
        elif t.unreported >= PROGRESS_EVERY:
            self._ask(t.assembly, why=PROGRESS)

    def _unknown_chunk(self, file_id: str) -> None:
        if self.installed.get(file_id) is not None:
            self.counters.duplicates += 1  # a late copy of a chunk of a file already installed
            return
        self.counters.rejected[UNKNOWN_FILE] += 1
        now = self._clock()
        if now - self._unknown_asked.get(file_id, -UNKNOWN_REPEAT_S) < UNKNOWN_REPEAT_S:
            return
        if not self._unsolicited.allow():
            self.counters.unanswered += 1
            return
        if len(self._unknown_asked) > 1000:
            self._unknown_asked.clear()
        self._unknown_asked[file_id] = now
        self.counters.missing_sent += 1
        self._status(FileStatus(file_id, "down", "missing", reason=UNKNOWN_FILE, missing=[], manifest=True))

    async def _install(self, t: Transfer) -> None:
        m = t.assembly.manifest
        dest = self.inbox / m.device if m.device else self.inbox
        try:
            path = await asyncio.to_thread(t.assembly.install, dest)
        except FileRejected as exc:  # the whole does not match: every chunk is asked for again, once
            self.counters.rejected[exc.reason] += 1
            log.warning("downloads: %s refused as a whole: %s", m.id, exc)
            t.whole_mismatches += 1
            if t.whole_mismatches > 1:  # the manifest itself must be wrong: sending it all again would loop
                await self._give_up(t, exc.reason)
            else:
                self._ask(t.assembly, why=exc.reason)
            return
        except OSError as exc:
            self._io_failed(m.id, exc)
            return
        del self._transfers[m.id]
        done = Installed(m.id, m.name, path.relative_to(self.inbox).as_posix(), m.sha256, m.size, m.device)
        try:
            await asyncio.to_thread(self.installed.add, done)
        except OSError as exc:  # the file is installed all the same; a repeated manifest restarts it
            log.error("downloads: the record of installed files cannot be written: %s", exc)
        self.counters.received += 1
        log.info("downloads: %s installed as %s (%d bytes)", m.id, done.path, m.size)
        self._received(done)

    # -- answers ------------------------------------------------------------------------------------

    def _report_progress(self) -> float | None:
        """With nothing left to handle: a ``progress`` status (the full ``missing`` list) for each
        transfer that got chunks since its last one but none for :data:`PROGRESS_QUIET_S`, so a
        pusher whose window is below :data:`PROGRESS_EVERY` sends the next ones. Seconds until the
        next one is due (None: none is)."""
        now, due = self._clock(), None
        for t in self._transfers.values():
            if t.unreported:
                wait = t.active_at + PROGRESS_QUIET_S - now
                if wait <= 0:
                    self._ask(t.assembly, why=PROGRESS)
                else:
                    due = wait if due is None else min(due, wait)
        return due

    def _check_stalls(self) -> None:
        if not self._link_up:
            return
        now = self._clock()
        for t in self._transfers.values():
            if now - t.last_progress >= t.stall_s:
                t.last_progress, t.stall_s = now, min(t.stall_s * 2, STALL_CAP_S)
                self._ask(t.assembly, why=STALLED)

    async def _expire(self) -> None:
        """Drop the transfers that got no chunk for ``timeout_s`` (their pusher is gone): ``failed expired``."""
        now = self._clock()
        for t in [t for t in self._transfers.values() if now - t.active_at >= self.timeout_s]:
            log.warning("downloads: %s got no chunk for %.0f s: dropped", t.assembly.id, now - t.active_at)
            await self._give_up(t, EXPIRED)

    async def _give_up(self, t: Transfer, reason: str) -> None:
        """Drop a transfer (its disk budget is free again) and answer ``failed`` with ``reason``."""
        self._transfers.pop(t.assembly.id, None)
        try:
            await asyncio.to_thread(t.assembly.discard)
        except OSError as exc:
            log.error("downloads: the work files of %s cannot be removed: %s", t.assembly.id, exc)
        self.counters.failed[reason] += 1
        self._status(FileStatus(t.assembly.id, "down", "failed", reason=reason))

    def _ask(self, assembly: Assembly, indexes: list[int] | None = None, *, why: str) -> None:
        """A ``missing`` status; its ``reason`` says why it is sent (see the module doc)."""
        missing = assembly.missing() if indexes is None else indexes
        self.counters.missing_sent += 1
        m = assembly.manifest
        t = self._transfers.get(m.id)
        if indexes is None and t is not None:  # a full list: it reports every chunk written so far
            t.unreported = 0
        self._status(FileStatus(m.id, "down", "missing", name=m.name, size=m.size, reason=why,
                                missing=to_ranges(missing), manifest=False, device=m.device))

    def _ask_dropped(self) -> None:
        """Once the queue is empty: ask for the chunks dropped while it was full."""
        dropped, self._dropped = self._dropped, {}
        for file_id, indexes in dropped.items():
            t = self._transfers.get(file_id)
            wanted = sorted(i for i in indexes if t is not None and i < t.assembly.manifest.chunks
                            and not t.assembly.has(i))
            if t is not None and wanted:
                self._ask(t.assembly, wanted, why=BUSY)

    def _received(self, done: Installed) -> None:
        self._status(FileStatus(done.id, "down", "received", name=done.name, size=done.size, sha256=done.sha256,
                                device=done.device, path=done.path))

    def _refuse(self, file_id: str, exc: FileRejected) -> None:
        self.counters.rejected[exc.reason] += 1
        self.counters.failed[exc.reason] += 1
        log.warning("downloads: %s refused: %s", file_id[:40], exc)
        if not self._unsolicited.allow():  # (the id grammar was checked by offer)
            self.counters.unanswered += 1
            return
        self._status(FileStatus(file_id, "down", "failed", reason=exc.reason))

    def _io_failed(self, file_id: str, exc: OSError) -> None:
        log.error("downloads: %s failed on the disk: %s", file_id, exc)
        t = self._transfers.pop(file_id, None)
        if t is not None:
            t.assembly.discard()
        self.counters.failed[IO_ERROR] += 1
        self._status(FileStatus(file_id, "down", "failed", reason=IO_ERROR))

