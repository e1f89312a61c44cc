"""The gateway's bulk source (:class:`bridge.uplink.bulk.BulkSource`): the chunks of the files in
``sending/``, each transfer's manifest first, then its chunks in order, oldest transfer first.

Progress is persisted in ``uploads.db`` (:mod:`gateway.files.uploads_db`): a chunk the cloud broker
acknowledged is marked there (the writes of a burst of PUBACKs grouped into one transaction), so a
reconnect or a restart goes on from the first unacknowledged chunk; a chunk sent before goes again
with the resend flag. A chunk sent ``max_attempts`` times fails the transfer. Every chunk
acknowledged makes the transfer ``sent``; the receiver's receipt (:mod:`gateway.files.receipts`)
makes it ``stored`` (or asks for chunks again). While a sent file waits for that receipt its
manifest is published again after 30 s, then at doubling intervals up to 10 min, for at most
``keep_sent_s``; then it is counted as expired, set aside (``outbox/.rejected/``: it may be the only
copy) and reported as FileStatus ``failed`` with reason ``expired``. Every outcome is a FileStatus
record on the control lane. Runs on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bridge.protocol.file_topics import FileTopics
from bridge.protocol.files import HASH_MISMATCH, FileRejected, Manifest, encode_chunk, encode_manifest
from bridge.protocol.records import FileStatus
from bridge.transfer.plan import read_chunk
from bridge.uplink.bulk import BulkItem
from gateway.files.counters import UploadCounters
from gateway.files.uploads_db import FilesError, UploadRow, UploadsDb, now_ms

log = logging.getLogger(__name__)

MANIFEST = -1  # the index that stands for the manifest in keys and in flight
FIRST_REPEAT_S = 30.0
MAX_REPEAT_S = 600.0
SAVE_GROUP_S = 0.025
EXPIRED = "expired"  # the reason of a sent file that got no receipt within keep_sent_s


@dataclass
class Transfer:
    row: UploadRow
    path: Path
    waiting: list[int] = field(default_factory=list)  # heap of chunk indexes to send
    manifest_due: bool = False
    manifest_sends: int = 0  # sends of the manifest since it was last acknowledged
    in_flight: set[int] = field(default_factory=set)
    repeat_s: float = FIRST_REPEAT_S
    repeat_at: float = 0.0  # monotonic: when to publish the manifest again (state sent)

    def queue(self, index: int) -> None:
        if index not in self.in_flight and index not in self.waiting:
            heapq.heappush(self.waiting, index)


class Prefetch:
    """The next chunk read ahead in a worker thread, so reading and hashing it (~1 ms per MiB on a
    PC, 10-20 ms on a Pi) leaves the event loop. Taken only when it is ready and is the chunk
    wanted; otherwise that chunk is read on the loop as before (same data, same checks)."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="upload-read-ahead")
        self._slot: tuple[str, int, concurrent.futures.Future[tuple[bytes, bytes]]] | None = None

    def get(self, path: Path, manifest: Manifest, index: int, counters: UploadCounters) -> tuple[bytes, bytes]:
        slot, self._slot = self._slot, None
        if slot is not None:
            file_id, ahead, fut = slot
            if (file_id, ahead) == (manifest.id, index) and fut.done() and fut.exception() is None:
                counters.chunks_read_ahead += 1
                return fut.result()
            fut.cancel()
        return read_chunk(path, manifest, index)

    def ready(self) -> bool:
        """A chunk read ahead is waiting."""
        return self._slot is not None and self._slot[2].done()

    def ahead(self, path: Path, manifest: Manifest, index: int) -> None:
        self._slot = (manifest.id, index, self._pool.submit(read_chunk, path, manifest, index))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def status(row: UploadRow, state: str, reason: str = "") -> FileStatus:
    m = row.manifest
    return FileStatus(m.id, "up", state, name=m.name, size=m.size, sha256=m.sha256, reason=reason, device=m.device)


class Uploader:
    def __init__(self, db: UploadsDb, sending_dir: Path, topics: FileTopics, counters: UploadCounters, *,
                 max_attempts: int, keep_sent_s: float, on_status: Callable[[FileStatus], None],
                 wake: Callable[[], None], on_gone: Callable[[Path, str, str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.sending_dir = sending_dir
        self._topics = topics
        self.counters = counters
        self._max_attempts = max_attempts
        self._keep_sent_ms = keep_sent_s * 1000
        self._on_status = on_status
        self._wake = wake
        self._on_gone = on_gone  # a failed transfer's file: (path, name, reason)
        self._clock = clock
        self.transfers: dict[str, Transfer] = {}  # in send order
        self._dirty: dict[str, UploadRow] = {}
        self._save_timer: asyncio.TimerHandle | None = None
        self.prefetch = Prefetch()

    def start(self) -> None:
        """Take up the transfers found in ``uploads.db`` (after a restart)."""
        self.sending_dir.mkdir(parents=True, exist_ok=True)
        rows, unreadable = self.db.load()
        for file_id, name, reason in unreadable:  # already failed in the history: the file is set aside
            log.warning("upload %s (%s) failed: %s", file_id, name, reason)
            self.counters.files_failed += 1
            if (self.sending_dir / file_id).is_file():
                self._on_gone(self.sending_dir / file_id, name, reason)
        for row in rows:
            path = self.sending_dir / row.id
            if not path.is_file():
                self._finish(Transfer(row, path), "failed", "the file in sending/ is gone")
                continue
            self._adopt(row)

    def add(self, row: UploadRow) -> None:
        """A new transfer (already in ``uploads.db``, its file in ``sending/``)."""
        self._adopt(row)
        self.counters.files_queued += 1
        self._wake()

    def _adopt(self, row: UploadRow) -> None:
        t = Transfer(row, self.sending_dir / row.id)
        t.waiting = [i for i, done in enumerate(row.acked) if not done]
        t.manifest_due = row.state != "sending"  # not yet acknowledged, or sent and waiting for a receipt
        t.repeat_at = self._clock() + FIRST_REPEAT_S
        self.transfers[row.id] = t

    @property
    def bytes_on_disk(self) -> int:
        return sum(t.row.manifest.size for t in self.transfers.values())

    # the BulkSource port
    def available(self) -> int:
        return sum(len(t.waiting) + t.manifest_due for t in self.transfers.values())

    def in_flight(self) -> int:
        return sum(len(t.in_flight) for t in self.transfers.values())

    def take(self, limit: int) -> list[BulkItem]:
        items: list[BulkItem] = []
        for t in list(self.transfers.values()):
            while len(items) < limit:
                item = self._next(t)
                if item is None:
                    break
                items.append(item)
            if len(items) >= limit:
                break
        return items

    def _next(self, t: Transfer) -> BulkItem | None:
        m = t.row.manifest
        if t.manifest_due:
            t.manifest_due = False
            if t.manifest_sends >= self._max_attempts:
                self._finish(t, "failed", f"the manifest was sent {t.manifest_sends} times without being acknowledged")
                return None
            t.manifest_sends += 1
            t.in_flight.add(MANIFEST)
            self.counters.manifests_sent += 1
            return BulkItem(f"{m.id}/{MANIFEST}", self._topics.manifest("up", m.id), encode_manifest(m))
        if not t.waiting or t.row.id not in self.transfers:
            return None
        index = heapq.heappop(t.waiting)
        sends = t.row.attempts[index]
        if sends >= self._max_attempts:
            self._finish(t, "failed", f"chunk {index} was sent {sends} times without being acknowledged")
            return None
        try:
            data, digest = self.prefetch.get(t.path, m, index, self.counters)
        except (OSError, FileRejected) as exc:
            self._finish(t, "failed", f"cannot read chunk {index}: {exc}")
            return None
        if t.waiting:
            self.prefetch.ahead(t.path, m, t.waiting[0])
        t.row.attempts[index] = sends + 1
        t.in_flight.add(index)
        self._dirty[m.id] = t.row
        if sends:
            self.counters.chunks_resent += 1
        else:
            self.counters.chunks_sent += 1
        self.counters.bulk_bytes += len(data)
        payload = encode_chunk(m.id, index, index * m.chunk_size, data, resend=sends > 0, sha256=digest)
        return BulkItem(f"{m.id}/{index}", self._topics.chunk("up", m.id), payload)

    def settle(self, key: str, ok: bool) -> None:
        file_id, _, idx = key.partition("/")
        t = self.transfers.get(file_id)
        index = int(idx)
        if t is None or index not in t.in_flight:
            return  # finished meanwhile
        t.in_flight.discard(index)
        if not ok:
            self._requeue(t, index)
            return
        if index == MANIFEST:
            t.manifest_sends = 0
            if t.row.state == "queued":
                t.row.state = "sending"
                self._dirty[file_id] = t.row
        else:
            t.row.acked[index] = 1
            self._dirty[file_id] = t.row
        if t.row.state == "sending" and not t.waiting and not t.in_flight and all(t.row.acked):
            self._sent(t)
        self._schedule_save()

    def _requeue(self, t: Transfer, index: int) -> None:
        if index == MANIFEST:
            t.manifest_due = True
        else:
            t.queue(index)

    def release(self, key: str) -> None:
        file_id, _, idx = key.partition("/")
        t = self.transfers.get(file_id)
        index = int(idx)
        if t is not None and index in t.in_flight:
            t.in_flight.discard(index)
            if index == MANIFEST:  # it never went out: not an attempt
                self.counters.manifests_sent -= 1
                t.manifest_sends -= 1
            else:
                t.row.attempts[index] -= 1
                first = t.row.attempts[index] == 0
                self.counters.chunks_sent -= first
                self.counters.chunks_resent -= not first
                self.counters.bulk_bytes -= t.row.manifest.chunk_length(index)
            self._requeue(t, index)

    def reject(self, key: str, reason: str) -> None:
        """The broker refused the manifest or a chunk for good: the transfer fails at once."""
        t = self.transfers.get(key.partition("/")[0])
        if t is not None:
            what = "the manifest" if key.endswith(f"/{MANIFEST}") else f"chunk {key.rpartition('/')[2]}"
            self._finish(t, "failed", f"{what} {reason}")

    def release_all(self) -> int:
        released = 0
        for t in self.transfers.values():
            for index in list(t.in_flight):
                t.in_flight.discard(index)
                self._requeue(t, index)
                released += 1
        self.save()
        return released

    def _sent(self, t: Transfer) -> None:
        t.row.state, t.row.sent_ms = "sent", now_ms()
        t.repeat_s = FIRST_REPEAT_S
        t.repeat_at = self._clock() + FIRST_REPEAT_S
        self._dirty[t.row.id] = t.row
        self.counters.files_sent += 1
        self._on_status(status(t.row, "sent"))
        log.info("file %s (%s) sent: every chunk acknowledged", t.row.id, t.row.manifest.name)

    # receipts (gateway.files.receipts) and the periodic tick
    def resend(self, file_id: str, chunks: tuple[int, ...], manifest: bool) -> bool:
        """The receiver misses these chunks (and the manifest): send them again. False if unknown."""
        t = self.transfers.get(file_id)
        if t is None:
            return False
        waiting = set(t.waiting)
        for index in chunks:
            if 0 <= index < len(t.row.acked):
                t.row.acked[index] = 0
                if index not in waiting and index not in t.in_flight:
                    t.waiting.append(index)
                    waiting.add(index)
        heapq.heapify(t.waiting)
        t.manifest_due = t.manifest_due or manifest
        if t.row.state == "sent" and chunks:
            t.row.state = "sending"
        self._dirty[file_id] = t.row
        self._schedule_save()
        self._wake()
        return True

    def finish(self, file_id: str, state: str, reason: str = "", sha256: str | None = None) -> bool:
        """The receiver stored the file, or refused it. False if unknown. A ``stored`` whose
        ``sha256`` is not the file's raises ``FileRejected("hash_mismatch")``: the file is kept."""
        t = self.transfers.get(file_id)
        if t is None:
            return False
        if state == "stored" and sha256 is not None and sha256 != t.row.manifest.sha256:
            raise FileRejected(HASH_MISMATCH, f"receipt stored for {file_id} with sha256 {sha256[:16]}..., "
                                              f"the file has {t.row.manifest.sha256[:16]}...: kept")
        if state == "stored" and t.row.state != "sent":
            self._sent(t)  # the receipt overtook the last PUBACKs: every chunk did arrive
        self._finish(t, state, reason)
        return True

    def _finish(self, t: Transfer, state: str, reason: str) -> None:
        self.transfers.pop(t.row.id, None)
        self._dirty.pop(t.row.id, None)
        try:
            self.db.finish(t.row, state, reason)
        except FilesError as exc:
            log.warning("upload %s: could not record its end (%s): %s", t.row.id, state, exc)
        if state == "stored":
            self.counters.files_stored += 1
            t.path.unlink(missing_ok=True)
        else:  # failed or expired: the file is kept aside (it may be the only copy)
            self.counters.files_failed += state == "failed"
            self.counters.files_expired += state == "expired"
            log.warning("upload %s (%s) %s: %s", t.row.id, t.row.manifest.name, state, reason)
            self._on_gone(t.path, t.row.manifest.name, reason)
        self._on_status(status(t.row, "failed" if state == "expired" else state, reason))

    def tick(self) -> None:
        """Periodic: publish the manifest of sent files again while no receipt came; expire those
        sent longer than ``keep_sent_s`` ago; save progress."""
        now, wall = self._clock(), now_ms()
        for t in list(self.transfers.values()):
            if t.row.state != "sent":
                continue
            if t.row.sent_ms is not None and wall - t.row.sent_ms > self._keep_sent_ms:
                self._finish(t, "expired", EXPIRED)
            elif now >= t.repeat_at and MANIFEST not in t.in_flight:
                t.manifest_due = True
                t.repeat_s = min(t.repeat_s * 2, MAX_REPEAT_S)
                t.repeat_at = now + t.repeat_s
                self._wake()
        self.save()

    def _schedule_save(self) -> None:
        if self._save_timer is None:
            self._save_timer = asyncio.get_running_loop().call_later(SAVE_GROUP_S, self.save)

    def save(self) -> None:
        """Write the progress of every transfer changed since the last save, in one transaction."""
        if self._save_timer is not None:
            self._save_timer.cancel()
            self._save_timer = None
        rows, self._dirty = list(self._dirty.values()), {}
        if not rows:
            return
        try:
            self.db.save(*rows)
        except FilesError as exc:  # kept in memory, tried again at the next save
            log.warning("upload progress not saved yet: %s", exc)
            self._dirty.update({r.id: r for r in rows})
