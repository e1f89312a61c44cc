"""What the sink's file receiver writes and answers: its options and counters, the row of a
transfer in the store's ``files`` table (:class:`~bridge.cloud.sink_writes.FileWrite`), the
``missing`` receipt of a transfer under way, and what one group of file messages does once its
transaction commits (:class:`Group`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from bridge.cloud.sink_writes import FileWrite, InvalidWrite, Write
from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.errors import BridgeError
from bridge.mqtt.types import Message
from bridge.protocol.files import NO_SPACE, FileRejected, Receipt, encode_receipt
from bridge.protocol.topics import CloudTopics, TopicPattern
from bridge.transfer.assembly import Assembly

__all__ = ["IO_ERROR", "FileCounters", "FileOptions", "Group", "Stall", "file_filters", "missing_receipt", "now_ms",
           "refused_row", "remember", "send_receipts", "transfer_row"]

log = logging.getLogger("bridge.cloud.sink")
IO_ERROR = "io_error"

REMEMBERED = 10_000  # files stored / failed / asked for a manifest lately, kept in memory
V = TypeVar("V")


@dataclass(frozen=True)
class FileOptions:
    """``--files-dir``, ``--files-max-bytes``, the stall timer's first wait and cap, and
    ``--files-expire-s`` (a transfer under way that got nothing for that long is dropped)."""

    root: Path
    max_bytes: int = 1024**3
    stall_s: float = 30.0
    max_stall_s: float = 600.0
    expire_s: float = 7 * 86_400.0


@dataclass
class FileCounters:
    """What the file receiver did since the sink started (bad input is in the sink's invalid counters)."""

    manifests: int = 0
    chunks: int = 0
    duplicate_chunks: int = 0
    repeated_manifests: int = 0  # manifests of files already stored (answered ``stored`` again)
    stored: int = 0
    failed: int = 0
    abandoned: int = 0  # transfers dropped because their gateway reported the upload failed
    expired: int = 0  # transfers dropped after ``expire_s`` without a message
    resumes: int = 0  # (re)connects without a broker session: every transfer under way asked for what it misses
    resumes_deferred: int = 0  # reconnects with the session kept: left to the stall timer
    receipts: Counter[str] = field(default_factory=Counter)  # published, by state
    receipts_lost: int = 0


@dataclass
class Group:
    """What one group of file messages does once its transaction commits."""

    rows: dict[tuple[str, str], FileWrite] = field(default_factory=dict)
    duplicates: Counter[tuple[str, str]] = field(default_factory=Counter)
    invalid: list[InvalidWrite] = field(default_factory=list)
    receipts: list[tuple[str, Receipt]] = field(default_factory=list)
    acks: list[tuple[Message, MqttConnection]] = field(default_factory=list)

    def writes(self) -> list[Write]:
        rows: list[Write] = [replace(row, duplicates=self.duplicates[key]) for key, row in self.rows.items()]
        return [*rows, *self.invalid]

    def reject(self, gateway: str, exc: FileRejected) -> None:
        self.invalid.append(InvalidWrite(gateway, exc.reason))
        log.warning("file message from %s refused: %s", gateway, exc)

    def io_error(self, gateway: str, exc: OSError, root: Path) -> None:
        reason = NO_SPACE if exc.errno == 28 else IO_ERROR  # ENOSPC
        log.error("file receiver: %s on %s (the chunk is asked for again later)", exc, root)
        self.invalid.append(InvalidWrite(gateway, reason))


@dataclass
class Stall:
    last: float
    wait: float


def file_filters(prefix: str) -> list[tuple[str, int]]:
    """The receiver's QoS 1 subscriptions: every gateway's upload manifests and chunks (never shared)."""
    base = TopicPattern(prefix).subscription()
    return [(f"{base}/files/up/+/manifest", 1), (f"{base}/files/up/+/chunk", 1)]


async def send_receipts(outbox: asyncio.Queue[tuple[str, Receipt]], conn: Callable[[], MqttConnection | None],
                        prefix: str, counters: FileCounters) -> None:
    """Publish the receipts put in ``outbox`` on the connection ``conn()`` names (forever)."""
    while True:
        gateway, receipt = await outbox.get()
        current = conn()
        topic = CloudTopics(gateway, prefix).files.receipt("up", receipt.id)
        if current is None or current.closed:
            counters.receipts_lost += 1
            continue
        try:
            await asyncio.wait_for(current.publish(topic, encode_receipt(receipt), qos=1), 30)
        except (BridgeError, asyncio.TimeoutError) as exc:
            counters.receipts_lost += 1
            log.info("receipt %s for %s not delivered (%s); the stall timer asks again", receipt.state,
                     receipt.id, exc)
        else:
            counters.receipts[receipt.state] += 1


def remember(memory: dict[tuple[str, str], V], key: tuple[str, str], value: V) -> V:
    """Keep ``value`` under ``key`` in a memory of the latest :data:`REMEMBERED` entries."""
    memory.pop(key, None)
    memory[key] = value
    if len(memory) > REMEMBERED:
        del memory[next(iter(memory))]
    return value


def now_ms() -> int:
    return int(time.time() * 1000)


def missing_receipt(assembly: Assembly) -> Receipt:
    return Receipt(assembly.id, "missing", tuple(assembly.missing()), ts_ms=now_ms())


def transfer_row(gateway: str, assembly: Assembly, state: str, *, reason: str = "", path: str | None = None,
         stored_ms: int | None = None) -> FileWrite:
    m = assembly.manifest
    return FileWrite(gateway, m.id, m.name, m.size, m.sha256, m.chunks, assembly.received, state, now_ms(),
                     reason=reason, path=path, stored_ms=stored_ms, device=m.device, content_type=m.content_type,
                     meta_json=json.dumps(dict(m.meta), sort_keys=True, separators=(",", ":")))


def refused_row(gateway: str, file_id: str, payload: bytes, reason: str) -> FileWrite:
    """The row of a refused manifest: what could be read of it (a hostile name is only text here)."""
    obj: Any = None
    with contextlib.suppress(ValueError, RecursionError):
        obj = json.loads(payload.decode("utf-8", "replace"))
    obj = obj if isinstance(obj, dict) else {}
    name, size, sha = obj.get("name"), obj.get("size"), obj.get("sha256")
    return FileWrite(gateway, file_id, _text(name, 255),
                     size if isinstance(size, int) and not isinstance(size, bool) and 0 <= size < 2**63 else 0,
                     _text(sha, 64), 0, 0, "failed", now_ms(), reason=reason)


def _text(value: object, limit: int) -> str:
    """A string any database takes (no NUL, no lone surrogate), or ``""`` for a non-string."""
    if not isinstance(value, str):
        return ""
    return value[:limit].encode("utf-8", "replace").decode("utf-8").replace("\x00", "?")
