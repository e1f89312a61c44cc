"""What the sink's file receiver writes and answers: its options and counters, the row of a
transfer in the store's ``files`` table (:class:`~bridge.cloud.sink_writes.FileWrite`) and the
``missing`` receipt of a transfer under way."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.cloud.sink_writes import FileWrite
from bridge.protocol.files import Receipt
from bridge.transfer.assembly import Assembly

__all__ = ["FileCounters", "FileOptions", "missing_receipt", "now_ms", "refused_row", "transfer_row"]


@dataclass(frozen=True)
class FileOptions:
    """``--files-dir``, ``--files-max-bytes`` and the stall timer's first wait and cap."""

    root: Path
    max_bytes: int = 1024**3
    stall_s: float = 30.0
    max_stall_s: float = 600.0


@dataclass
class FileCounters:
    """What the file receiver did since the sink started (bad input is in the sink's invalid counters)."""

    manifests: int = 0
    chunks: int = 0
    duplicate_chunks: int = 0
    repeated_manifests: int = 0  # manifests of files already stored (answered ``stored`` again)
    stored: int = 0
    failed: int = 0
    receipts: Counter[str] = field(default_factory=Counter)  # published, by state
    receipts_lost: int = 0


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
