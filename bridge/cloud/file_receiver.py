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
(re)connects, which is what resumes a transfer whose chunks were lost with the sink's broker
session; ``missing`` with ``manifest`` set for a chunk of a file this side does not know (at most
once per ``stall_s`` per file); ``failed`` with the reason for a manifest refused (size limit, bad
name, conflict) or a whole that does not match its SHA-256.
Bad input is counted by :class:`~bridge.protocol.files.FileRejected` reason in the sink's invalid
counters (and the store's ``invalid`` table), never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

from bridge.cloud.errors import SinkStoreError
from bridge.cloud.file_intake import FileIntake
from bridge.cloud.file_rows import FileCounters, FileOptions, missing_receipt, now_ms, refused_row, transfer_row
from bridge.cloud.sink_handler import SinkCounters
from bridge.cloud.sink_port import SinkStorePort
from bridge.cloud.sink_writes import FileWrite, InvalidWrite, Write
from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.errors import BridgeError
from bridge.mqtt.types import Message
from bridge.protocol.files import (
    BAD_ID,
    MALFORMED,
    NO_SPACE,
    UNKNOWN_FILE,
    FileRejected,
    Receipt,
    decode_chunk,
    decode_manifest,
    encode_receipt,
)
from bridge.protocol.topics import CloudTopics, TopicPattern, valid_id
from bridge.transfer.assembly import Assembly

__all__ = ["FileCounters", "FileOptions", "FileReceiver", "file_filters"]

log = logging.getLogger("bridge.cloud.sink")

_GROUP = 64  # file messages per transaction at most
_REMEMBERED = 10_000  # files stored lately / asked for a manifest lately, kept in memory
V = TypeVar("V")
_TICK, _RESUME = "tick", "resume"
IO_ERROR = "io_error"
_HEX = frozenset("0123456789abcdef")


@dataclass
class _Stall:
    last: float
    wait: float


@dataclass
class _Group:
    """What one group of file messages does once its transaction commits."""

    rows: dict[tuple[str, str], FileWrite] = field(default_factory=dict)
    duplicates: Counter[tuple[str, str]] = field(default_factory=Counter)
    invalid: list[InvalidWrite] = field(default_factory=list)
    receipts: list[tuple[str, Receipt]] = field(default_factory=list)
    acks: list[tuple[Message, MqttConnection]] = field(default_factory=list)

    def writes(self) -> list[Write]:
        rows: list[Write] = [replace(row, duplicates=self.duplicates[key]) for key, row in self.rows.items()]
        return [*rows, *self.invalid]




def _remember(memory: dict[tuple[str, str], V], key: tuple[str, str], value: V) -> V:
    """Keep ``value`` under ``key`` in a memory of the latest :data:`_REMEMBERED` entries."""
    memory.pop(key, None)
    memory[key] = value
    if len(memory) > _REMEMBERED:
        del memory[next(iter(memory))]
    return value


def file_filters(prefix: str) -> list[tuple[str, int]]:
    """The receiver's QoS 1 subscriptions: every gateway's upload manifests and chunks (never shared)."""
    base = TopicPattern(prefix).subscription()
    return [(f"{base}/files/up/+/manifest", 1), (f"{base}/files/up/+/chunk", 1)]


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
        self._queue: asyncio.Queue[tuple[Message, MqttConnection] | str] = asyncio.Queue()
        self._outbox: asyncio.Queue[tuple[str, Receipt]] = asyncio.Queue()
        self._conn: MqttConnection | None = None
        self._stalls: dict[tuple[str, str], _Stall] = {}
        self._asked: dict[tuple[str, str], float] = {}  # when a manifest was last asked for
        # the rows of files stored lately (written again if a storage failure lost the first write)
        self._installed: dict[tuple[str, str], FileWrite] = {}
        self._offload = asyncio.to_thread  # where disk work runs (bench/sink_files.py compares it with inline)

    # ------------------------------------------------------------ wiring
    def route(self, topic: str) -> tuple[str, str, str] | None:
        """``(gateway, file id, part)`` of a file topic this receiver takes, or None."""
        for pattern, part in self._routes:
            fields = pattern.match(topic)
            if fields is not None:
                return fields["gateway_id"], fields["file_id"], part
        return None

    def add(self, message: Message, conn: MqttConnection) -> None:
        """Take a file message that arrived on ``conn`` (acknowledged there once handled)."""
        self._conn = conn  # the latest connection: receipts go there (a redelivery may come before SUBACK)
        self._queue.put_nowait((message, conn))

    def connected(self, conn: MqttConnection) -> None:
        """The sink is subscribed on ``conn``: receipts go there, and every transfer under way is
        asked for what it misses (chunks sent while the sink was away may be lost)."""
        self._conn = conn
        self._queue.put_nowait(_RESUME)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Load the transfers under way, run the worker, the receipt sender and the stall ticker."""
        found = await self._offload(self.intake.resume)
        log.info("file receiver on %s: %d transfers under way", self.options.root, found)
        tasks = [asyncio.create_task(job()) for job in (self._work, self._send, self._tick)]
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
            group = _Group()
            for item in items:
                try:
                    await self._item(item, group)
                except Exception:  # the loop's one catch-all: a poison message must not stop the receiver
                    self.sink_counters.invalid_reasons["internal error"] += 1
                    log.exception("unexpected failure handling a file message; acknowledged and dropped")
            self._commit(group)

    async def _item(self, item: tuple[Message, MqttConnection] | str, group: _Group) -> None:
        if item == _TICK:
            await self._check_stalls(group, resume=False)
        elif item == _RESUME:
            await self._check_stalls(group, resume=True)
        else:
            assert not isinstance(item, str)
            message, conn = item
            group.acks.append(item)
            await self._message(message, conn, group)

    def _commit(self, group: _Group) -> None:
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

    async def _message(self, message: Message, conn: MqttConnection, group: _Group) -> None:
        gateway, file_id, part = self.route(message.topic) or ("", "", "")
        if not valid_id(gateway):
            group.invalid.append(InvalidWrite(gateway[:64], "bad gateway id"))
        elif len(file_id) != 32 or not set(file_id) <= _HEX:
            self._reject(gateway, FileRejected(BAD_ID, repr(file_id[:40])), group)
        elif part == "manifest":
            await self._manifest(gateway, file_id, message.payload, group)
        else:
            await self._chunk(gateway, file_id, message.payload, group)

    # ------------------------------------------------------------ manifests and chunks
    async def _manifest(self, gateway: str, file_id: str, payload: bytes, group: _Group) -> None:
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
        known = self.intake.knows(gateway, file_id) or key in self._asked  # under way, or asked for
        try:
            assembly = await self._offload(self.intake.open, gateway, manifest)
        except FileRejected as exc:  # conflict: another manifest under this id is under way
            self._fail(gateway, file_id, exc, group, None)
            return
        except OSError as exc:
            self._io_error(gateway, exc, group)
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

    async def _chunk(self, gateway: str, file_id: str, payload: bytes, group: _Group) -> None:
        key = (gateway, file_id)
        try:
            chunk = decode_chunk(payload)
            if chunk.file_id != file_id:
                raise FileRejected(MALFORMED, f"chunk of {chunk.file_id} on the topic of {file_id}")
        except FileRejected as exc:
            self._reject(gateway, exc, group)
            return
        self.counters.chunks += 1
        assembly = self.intake.get(gateway, file_id)
        if assembly is None:
            if self._answer_stored(gateway, file_id, group):
                self.counters.duplicate_chunks += 1
            else:
                self._reject(gateway, FileRejected(UNKNOWN_FILE, f"chunk {chunk.index} of {file_id}"), group)
                self._ask_manifest(gateway, file_id, group)
            return
        try:
            new = await self._offload(self.intake.write, assembly, chunk)
        except FileRejected as exc:
            self._reject(gateway, exc, group)
            return
        except OSError as exc:
            self._io_error(gateway, exc, group)
            return
        self._touch(key)
        if not new:
            self.counters.duplicate_chunks += 1
            group.duplicates[key] += 1
        if assembly.complete:
            await self._install(gateway, assembly, group)
        else:
            group.rows[key] = transfer_row(gateway, assembly, "under_way")

    async def _install(self, gateway: str, assembly: Assembly, group: _Group) -> None:
        key = (gateway, assembly.id)
        try:
            path = await self._offload(self.intake.install, gateway, assembly)
        except FileRejected as exc:  # the chunks matched the manifest, the whole does not: the manifest lies
            self._stalls.pop(key, None)
            self._fail(gateway, assembly.id, exc, group, transfer_row(gateway, assembly, "failed", reason=exc.reason))
            return
        except OSError as exc:  # left complete: installing is tried again at the next stall check
            self._io_error(gateway, exc, group)
            return
        self._stalls.pop(key, None)
        shown = path.relative_to(self.options.root).as_posix()
        self.counters.stored += 1
        group.rows[key] = _remember(self._installed, key, transfer_row(gateway, assembly, "stored", path=shown,
                                                                       stored_ms=now_ms()))
        group.receipts.append((gateway, Receipt(assembly.id, "stored", sha256=assembly.manifest.sha256,
                                                ts_ms=now_ms())))
        log.info("stored %s from %s as %s (%d bytes)", assembly.id, gateway, shown, assembly.manifest.size)

    def _answer_stored(self, gateway: str, file_id: str, group: _Group) -> bool:
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

    # ------------------------------------------------------------ stalls and resume
    def _touch(self, key: tuple[str, str]) -> None:
        self._stalls[key] = _Stall(time.monotonic(), self.options.stall_s)

    def _ask_manifest(self, gateway: str, file_id: str, group: _Group) -> None:
        now = time.monotonic()
        if now - self._asked.get((gateway, file_id), -1e9) >= self.options.stall_s:
            _remember(self._asked, (gateway, file_id), now)
            group.receipts.append((gateway, Receipt(file_id, "missing", manifest=True, ts_ms=now_ms())))

    async def _check_stalls(self, group: _Group, *, resume: bool) -> None:
        """Ask for what each stalled transfer misses (every one under way when ``resume``)."""
        now = time.monotonic()
        for gateway, assembly in self.intake.under_way():
            key = (gateway, assembly.id)
            stall = self._stalls.setdefault(key, _Stall(now, self.options.stall_s))
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

    # ------------------------------------------------------------ receipts
    async def _send(self) -> None:
        while True:
            gateway, receipt = await self._outbox.get()
            conn = self._conn
            topic = CloudTopics(gateway, self._prefix).files.receipt("up", receipt.id)
            if conn is None or conn.closed:
                self.counters.receipts_lost += 1
                continue
            try:
                await asyncio.wait_for(conn.publish(topic, encode_receipt(receipt), qos=1), 30)
            except (BridgeError, asyncio.TimeoutError) as exc:
                self.counters.receipts_lost += 1
                log.info("receipt %s for %s not delivered (%s); the stall timer asks again", receipt.state,
                         receipt.id, exc)
            else:
                self.counters.receipts[receipt.state] += 1

    # ------------------------------------------------------------ refusals
    def _reject(self, gateway: str, exc: FileRejected, group: _Group) -> None:
        group.invalid.append(InvalidWrite(gateway, exc.reason))
        log.warning("file message from %s refused: %s", gateway, exc)

    def _fail(self, gateway: str, file_id: str, exc: FileRejected, group: _Group, row: FileWrite | None) -> None:
        self._reject(gateway, exc, group)
        self.counters.failed += 1
        if row is not None:
            group.rows[(gateway, file_id)] = row
        group.receipts.append((gateway, Receipt(file_id, "failed", reason=exc.reason, ts_ms=now_ms())))

    def _io_error(self, gateway: str, exc: OSError, group: _Group) -> None:
        reason = NO_SPACE if exc.errno == 28 else IO_ERROR  # ENOSPC
        log.error("file receiver: %s on %s (the chunk is asked for again later)", exc, self.options.root)
        group.invalid.append(InvalidWrite(gateway, reason))

