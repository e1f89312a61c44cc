"""The sink's file receiver (``edge-gateway sink --files-dir DIR``): uploads from every gateway,
chunk by chunk, into :class:`~bridge.cloud.file_intake.FileIntake`, recorded in the store's
``files`` table and answered with receipts on ``{prefix}/files/up/{id}/receipt``.

One worker task takes the file messages in arrival order (so each file's chunks in order), a group
at a time: the disk work of each message (writing and syncing a chunk, verifying and installing a
whole file) runs in a thread (:func:`asyncio.to_thread`) so the event loop stays free for the data
messages; then the group's rows go to the store in ONE transaction and only after that commit are
the group's messages acknowledged (as the data messages are, :mod:`bridge.cloud.sink_group`). A
storage failure acknowledges nothing and drops the connection: the broker redelivers, and a chunk
already on disk is then a counted duplicate. File messages are acknowledged in their own arrival order,
independently of the data messages' group commit: PUBACKs of the two may interleave out of PUBLISH
order, which brokers accept (mosquitto does: tests/e2e/test_sink_files.py).

Receipts (QoS 1, best effort: a lost one is covered by the stall timer here and by the gateway
publishing its manifest again): ``stored`` once a file is installed, and again for a manifest or
chunk of a file already stored; ``missing`` (the chunks not yet here) for a manifest of a file
already under way or asked for (the manifest that opens a transfer is not answered: its chunks are
on their way, and a list now would have them sent twice), after a stall (no chunk for ``stall_s``,
then doubling up to ``max_stall_s``), and for every transfer under way each time the sink
(re)connects WITHOUT its broker session, which is what resumes a transfer whose chunks were lost
with that session (a session kept holds them: the broker delivers them, and the stall timers only
start over); ``missing`` with ``manifest`` set for a chunk of a file this side does not know (at most
once per ``stall_s`` per file); ``failed`` with the reason for a manifest refused (size limit, bad
name, conflict), a whole that does not match its SHA-256, a transfer that got no message for
``expire_s`` (reason ``expired``: dropped), and again (at most once per ``stall_s``) for a manifest
or chunk of a file it failed lately. A transfer whose gateway reports the upload ``failed`` (its
FileStatus record, once the sink has stored it: :meth:`FileReceiver.status_stored`) is dropped
without an answer (row reason ``abandoned``).
Bad input is counted by reason in the sink's invalid counters (and ``invalid`` table), never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bridge.cloud.errors import SinkStoreError
from bridge.cloud.file_intake import FileIntake
from bridge.cloud.file_rows import (
    FileCounters,
    FileOptions,
    Group,
    Stall,
    file_filters,
    missing_receipt,
    now_ms,
    refused_row,
    remember,
    send_receipts,
    transfer_row,
)
from bridge.cloud.sink_handler import SinkCounters
from bridge.cloud.sink_port import SinkStorePort
from bridge.cloud.sink_writes import FileWrite, InvalidWrite
from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import Message
from bridge.protocol.files import (
    BAD_ID,
    MALFORMED,
    UNKNOWN_FILE,
    FileRejected,
    Receipt,
    decode_chunk,
    decode_manifest,
)
from bridge.protocol.records import FileStatus
from bridge.protocol.topics import TopicPattern, valid_id
from bridge.transfer.assembly import Assembly

__all__ = ["FileCounters", "FileOptions", "FileReceiver", "file_filters"]

log = logging.getLogger("bridge.cloud.sink")

_GROUP = 64  # file messages per transaction at most
_TICK, _RESUME, _DEFER = "tick", "resume", "defer"
EXPIRED = "expired"  # no message for --files-expire-s: the transfer was dropped
ABANDONED = "abandoned"  # the gateway reported the upload failed: the transfer was dropped
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class _Abandon:  # the gateway failed this upload
    gateway: str
    file_id: str


_Item = tuple[Message, MqttConnection] | str | _Abandon


class FileReceiver:
    """Receives the uploads of every gateway under ``prefix`` (see the module doc)."""

    def __init__(self, store: SinkStorePort, counters: SinkCounters, options: FileOptions, prefix: str) -> None:
        self.store = store
        self.sink_counters = counters
        self.counters = FileCounters()
        self.options = options
        self.intake = FileIntake(options.root)
        self._prefix = prefix
        self._routes = [(TopicPattern(f"{prefix}/files/up/{{file_id}}/{part}"), part) for part in ("manifest", "chunk")]
        self.filters = file_filters(prefix)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._outbox: asyncio.Queue[tuple[str, Receipt]] = asyncio.Queue()
        self._conn: MqttConnection | None = None
        self._stalls: dict[tuple[str, str], Stall] = {}
        self._asked: dict[tuple[str, str], float] = {}  # when a manifest was last asked for
        # the rows of files stored lately (written again if a storage failure lost the first write)
        self._installed: dict[tuple[str, str], FileWrite] = {}
        self._failed: dict[tuple[str, str], str] = {}  # files failed lately: their reason
        self._offload = asyncio.to_thread  # where disk work runs (bench/sink_files.py compares it with inline)

    # ------------------------------------------------------------ wiring
    def route(self, topic: str) -> tuple[str, str, str] | None:
        """``(gateway, file id, part)`` of a file topic this receiver takes, or None."""
        matches = ((pattern.match(topic), part) for pattern, part in self._routes)
        return next(((f["gateway_id"], f["file_id"], part) for f, part in matches if f is not None), None)

    def add(self, message: Message, conn: MqttConnection) -> None:
        """Take a file message that arrived on ``conn`` (acknowledged there once handled)."""
        self._conn = conn  # the latest connection: receipts go there (a redelivery may come before SUBACK)
        self._queue.put_nowait((message, conn))

    def connected(self, conn: MqttConnection) -> None:
        """The sink is subscribed on ``conn``: receipts go there. Without a broker session (a new
        one, or a clean start) every transfer under way is asked for what it misses: chunks sent
        while the sink was away are lost. With its session kept, the broker holds them and delivers
        them now: asking would have them all sent again, so only the stall timers start over."""
        self._conn = conn
        self._queue.put_nowait(_DEFER if conn.info.session_present else _RESUME)

    def status_stored(self, gateway: str, status: FileStatus) -> None:
        """A FileStatus record of ``gateway`` is stored: an upload it reports ``failed`` is dropped here."""
        if status.direction == "up" and status.state == "failed":
            self._queue.put_nowait(_Abandon(gateway, status.id))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Load the transfers under way, run the worker, the receipt sender and the stall ticker."""
        found = await self._offload(self.intake.resume)
        log.info("file receiver on %s: %d transfers under way", self.options.root, found)
        sender = send_receipts(self._outbox, lambda: self._conn, self._prefix, self.counters)
        tasks = [asyncio.create_task(job) for job in (self._work(), sender, self._tick())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ the worker
    async def _work(self) -> None:
        while True:
            items = [await self._queue.get()]
            while len(items) < _GROUP and not self._queue.empty():
                items.append(self._queue.get_nowait())
            group = Group()
            for item in items:
                try:
                    await self._item(item, group)
                except Exception:  # the loop's one catch-all: a poison message must not stop the receiver
                    self.sink_counters.invalid_reasons["internal error"] += 1
                    log.exception("unexpected failure handling a file message; acknowledged and dropped")
            self._commit(group)

    async def _item(self, item: _Item, group: Group) -> None:
        if isinstance(item, _Abandon):
            await self._abandon(item.gateway, item.file_id, group)
        elif item == _DEFER:
            self.counters.resumes_deferred += 1
            self._stalls.clear()  # each starts over at stall_s from now (_check_stalls)
        elif isinstance(item, str):
            self.counters.resumes += item == _RESUME
            await self._check_stalls(group, resume=item == _RESUME)
        else:
            message, conn = item
            group.acks.append(item)
            await self._message(message, conn, group)

    def _commit(self, group: Group) -> None:
        writes = group.writes()
        if writes:
            try:
                self.store.store_group(writes)
            except SinkStoreError as exc:
                log.error("cannot store the rows of %d file messages (%s); dropping the connection for redelivery",
                          len(group.acks), exc)
                self.sink_counters.store_errors += 1
                for conn in {id(c): c for _, c in group.acks}.values():
                    conn.abort("file rows not stored")
                return
        for message, conn in group.acks:
            conn.ack(message)
        for w in group.invalid:
            self.sink_counters.invalid_reasons[w.reason] += 1
        for receipt in group.receipts:
            self._outbox.put_nowait(receipt)

    async def _message(self, message: Message, conn: MqttConnection, group: Group) -> None:
        gateway, file_id, part = self.route(message.topic) or ("", "", "")
        if not valid_id(gateway):
            group.invalid.append(InvalidWrite(gateway[:64], "bad gateway id"))
        elif len(file_id) != 32 or not set(file_id) <= _HEX:
            group.reject(gateway, FileRejected(BAD_ID, repr(file_id[:40])))
        elif part == "manifest":
            await self._manifest(gateway, file_id, message.payload, group)
        else:
            await self._chunk(gateway, file_id, message.payload, group)

    # ------------------------------------------------------------ manifests and chunks
    async def _manifest(self, gateway: str, file_id: str, payload: bytes, group: Group) -> None:
        key = (gateway, file_id)
        try:
            manifest = decode_manifest(payload, max_size=self.options.max_bytes)
            if manifest.id != file_id:
                raise FileRejected(MALFORMED, f"manifest of {manifest.id} on the topic of {file_id}")
        except FileRejected as exc:
            self._fail(gateway, file_id, exc, group, refused_row(gateway, file_id, payload, exc.reason))
            return
        self.counters.manifests += 1
        if self._answer_stored(gateway, file_id, group):
            self.counters.repeated_manifests += 1
            return
        if not self.intake.knows(gateway, file_id) and self._answer_failed(gateway, file_id, group):
            return
        known = self.intake.knows(gateway, file_id) or key in self._asked  # under way, or asked for
        try:
            assembly = await self._offload(self.intake.open, gateway, manifest)
        except FileRejected as exc:  # conflict: another manifest under this id is under way
            self._fail(gateway, file_id, exc, group, None)
            return
        except OSError as exc:
            group.io_error(gateway, exc, self.options.root)
            return
        self._touch(key)
        self._asked.pop(key, None)
        if assembly.complete:  # an empty file, or every chunk was here already
            await self._install(gateway, assembly, group)
        else:
            group.rows[key] = transfer_row(gateway, assembly, "under_way")
            if known:  # the sender asks (it sent the manifest again): what is still missing
                group.receipts.append((gateway, missing_receipt(assembly)))
            # a new transfer is not answered: its chunks follow the manifest, and a "missing" now
            # would name chunks already on their way (sent twice); the stall timer asks if they stop

    async def _chunk(self, gateway: str, file_id: str, payload: bytes, group: Group) -> None:
        key = (gateway, file_id)
        try:
            chunk = decode_chunk(payload)
            if chunk.file_id != file_id:
                raise FileRejected(MALFORMED, f"chunk of {chunk.file_id} on the topic of {file_id}")
        except FileRejected as exc:
            group.reject(gateway, exc)
            return
        self.counters.chunks += 1
        assembly = self.intake.get(gateway, file_id)
        if assembly is None:
            if self._answer_stored(gateway, file_id, group):
                self.counters.duplicate_chunks += 1
            elif self._answer_failed(gateway, file_id, group):
                group.reject(gateway, FileRejected(UNKNOWN_FILE, f"chunk {chunk.index} of failed {file_id}"))
            else:
                group.reject(gateway, FileRejected(UNKNOWN_FILE, f"chunk {chunk.index} of {file_id}"))
                self._ask_manifest(gateway, file_id, group)
            return
        try:
            new = await self._offload(self.intake.write, assembly, chunk)
        except FileRejected as exc:
            group.reject(gateway, exc)
            return
        except OSError as exc:
            group.io_error(gateway, exc, self.options.root)
            return
        self._touch(key)
        if not new:
            self.counters.duplicate_chunks += 1
            group.duplicates[key] += 1
        if assembly.complete:
            await self._install(gateway, assembly, group)
        else:
            group.rows[key] = transfer_row(gateway, assembly, "under_way")

    async def _install(self, gateway: str, assembly: Assembly, group: Group) -> None:
        key = (gateway, assembly.id)
        try:
            path = await self._offload(self.intake.install, gateway, assembly)
        except FileRejected as exc:  # the chunks matched the manifest, the whole does not: the manifest lies
            self._stalls.pop(key, None)
            self._fail(gateway, assembly.id, exc, group, transfer_row(gateway, assembly, "failed", reason=exc.reason))
            return
        except OSError as exc:  # left complete: installing is tried again at the next stall check
            group.io_error(gateway, exc, self.options.root)
            return
        self._stalls.pop(key, None)
        shown = path.relative_to(self.options.root).as_posix()
        self.counters.stored += 1
        group.rows[key] = remember(self._installed, key, transfer_row(gateway, assembly, "stored", path=shown,
                                                                       stored_ms=now_ms()))
        group.receipts.append((gateway, Receipt(assembly.id, "stored", sha256=assembly.manifest.sha256,
                                                ts_ms=now_ms())))
        log.info("stored %s from %s as %s (%d bytes)", assembly.id, gateway, shown, assembly.manifest.size)

    def _answer_stored(self, gateway: str, file_id: str, group: Group) -> bool:
        """If the file is already stored, answer ``stored`` again; whether it was."""
        row = self._installed.get((gateway, file_id))
        if row is not None:
            group.rows[(gateway, file_id)] = row  # nothing changes if its first write was committed
            sha256 = row.sha256
        else:
            state = self.store.file_state(gateway, file_id)
            if state is None or state[0] != "stored":
                return False
            sha256 = state[2]
        group.receipts.append((gateway, Receipt(file_id, "stored", sha256=sha256, ts_ms=now_ms())))
        return True

    def _answer_failed(self, gateway: str, file_id: str, group: Group) -> bool:
        """If the file failed here, answer ``failed`` again (at most once per ``stall_s``); whether it had."""
        key = (gateway, file_id)
        reason = self._failed.get(key)
        if reason is None:
            state = self.store.file_state(gateway, file_id)
            if state is None or state[0] != "failed":
                return False
            reason = remember(self._failed, key, "failed")  # (the store's row has the first reason)
        now = time.monotonic()
        if now - self._asked.get(key, -1e9) >= self.options.stall_s:
            remember(self._asked, key, now)
            group.receipts.append((gateway, Receipt(file_id, "failed", reason=reason, ts_ms=now_ms())))
        return True

    # ------------------------------------------------------------ stalls, resume and expiry
    def _touch(self, key: tuple[str, str]) -> None:
        self._stalls[key] = Stall(time.monotonic(), self.options.stall_s)
        self.intake.touch(*key)

    async def _abandon(self, gateway: str, file_id: str, group: Group) -> None:
        assembly = self.intake.get(gateway, file_id)
        if assembly is None:
            return
        await self._give_up(gateway, assembly, ABANDONED, group)
        self.counters.abandoned += 1
        log.info("dropped %s from %s: the gateway reported the upload failed", file_id, gateway)

    async def _expire(self, group: Group) -> None:
        for gateway, assembly in self.intake.idle(self.options.expire_s):
            await self._give_up(gateway, assembly, EXPIRED, group)
            self.counters.expired += 1
            group.receipts.append((gateway, Receipt(assembly.id, "failed", reason=EXPIRED, ts_ms=now_ms())))
            log.warning("dropped %s from %s: nothing for %g s (%d of %d chunks here)", assembly.id, gateway,
                        self.options.expire_s, assembly.received, assembly.manifest.chunks)

    async def _give_up(self, gateway: str, assembly: Assembly, reason: str, group: Group) -> None:
        key = (gateway, assembly.id)
        await self._offload(self.intake.drop, gateway, assembly, prune=True)
        self._stalls.pop(key, None)
        remember(self._failed, key, reason)
        group.rows[key] = transfer_row(gateway, assembly, "failed", reason=reason)

    def _ask_manifest(self, gateway: str, file_id: str, group: Group) -> None:
        now = time.monotonic()
        if now - self._asked.get((gateway, file_id), -1e9) >= self.options.stall_s:
            remember(self._asked, (gateway, file_id), now)
            group.receipts.append((gateway, Receipt(file_id, "missing", manifest=True, ts_ms=now_ms())))

    async def _check_stalls(self, group: Group, *, resume: bool) -> None:
        """Drop expired transfers; ask what each stalled one (each one when ``resume``) misses."""
        await self._expire(group)
        now = time.monotonic()
        for gateway, assembly in self.intake.under_way():
            key = (gateway, assembly.id)
            stall = self._stalls.setdefault(key, Stall(now, self.options.stall_s))
            if not resume and now - stall.last < stall.wait:
                continue
            stall.last, stall.wait = now, min(stall.wait * 2, self.options.max_stall_s)
            if assembly.complete:
                await self._install(gateway, assembly, group)
            else:
                group.receipts.append((gateway, missing_receipt(assembly)))

    async def _tick(self) -> None:
        period = max(0.05, min(self.options.stall_s / 4, 5.0))
        while True:
            await asyncio.sleep(period)
            if len(self.intake):  # (a length: the worker's thread may be adding one)
                self._queue.put_nowait(_TICK)

    # ------------------------------------------------------------ refusals
    def _fail(self, gateway: str, file_id: str, exc: FileRejected, group: Group, row: FileWrite | None) -> None:
        group.reject(gateway, exc)
        self.counters.failed += 1
        if row is not None:
            group.rows[(gateway, file_id)] = row
            remember(self._failed, (gateway, file_id), exc.reason)
            remember(self._asked, (gateway, file_id), time.monotonic())  # answered: not again before stall_s
        group.receipts.append((gateway, Receipt(file_id, "failed", reason=exc.reason, ts_ms=now_ms())))
