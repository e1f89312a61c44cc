"""What a group commit hands a sink store: one :data:`Write` per MQTT message, already decoded and
validated, and what the store answers for each (:data:`Outcome`). Pure: both stores use these, and
the helpers that split a group the same way in both.

A store applies a group in ONE transaction and answers, in the group's order: ``True`` (stored, or
counted for an invalid or status write), ``False`` (a duplicate: its key was stored before, in an
earlier transaction or earlier in this group; counted in ``duplicates``), or the
:class:`~bridge.protocol.errors.InvalidRecord` the database raised for that message alone (nothing
of it stored; counted in ``invalid`` under its reason, in the same transaction). A storage failure
raises :class:`~bridge.cloud.errors.SinkStoreError` and leaves nothing of the group stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.protocol.codec import Batch
from bridge.protocol.errors import InvalidRecord
from bridge.protocol.model import Lane
from bridge.protocol.records import Stamped

__all__ = ["BatchWrite", "ControlWrite", "FileWrite", "InvalidWrite", "Key", "Outcome", "StatusWrite", "Write",
           "counts", "key_of", "keys_in_order", "write_gateway"]


@dataclass(frozen=True)
class BatchWrite:
    """A telemetry batch that passed :func:`~bridge.cloud.sink_rows.check_batch`."""

    batch: Batch
    received_ms: int


@dataclass(frozen=True)
class ControlWrite:
    """A control record that passed :func:`~bridge.protocol.records.parse_control`."""

    record: Stamped
    received_ms: int


@dataclass(frozen=True)
class InvalidWrite:
    """A message that cannot be stored: count it under ``reason`` for ``gateway``."""

    gateway: str
    reason: str


@dataclass(frozen=True)
class StatusWrite:
    """A gateway's status (``online``/``offline``)."""

    gateway: str
    state: str
    received_ms: int


@dataclass(frozen=True)
class FileWrite:
    """Where an upload received with ``--files-dir`` stands: its row of ``files``, inserted at the
    first manifest and updated as chunks arrive and when it is stored or fails. ``duplicates`` is
    added to the row's count; a row already ``stored`` keeps everything else."""

    gateway: str
    id: str
    name: str
    size: int
    sha256: str
    chunks: int
    received_chunks: int
    state: str  # under_way | stored | failed
    first_ms: int
    duplicates: int = 0
    reason: str = ""
    path: str | None = None
    stored_ms: int | None = None
    device: str | None = None
    content_type: str = "application/octet-stream"
    meta_json: str = "{}"


Write = BatchWrite | ControlWrite | InvalidWrite | StatusWrite | FileWrite
Outcome = bool | InvalidRecord
Key = tuple[str, str, Lane, int]
"""The ledger key ``(gateway, stream, lane, seq)``."""


def key_of(write: Write) -> Key | None:
    """The ledger key a write claims, None for writes that only count or remember."""
    if isinstance(write, BatchWrite):
        b = write.batch
        return b.gateway, b.stream, "telemetry", b.seq
    if isinstance(write, ControlWrite):
        st = write.record.stamp
        return st.gateway, st.stream, "control", st.seq
    return None


def write_gateway(write: Write) -> str:
    """The gateway a write is about (where a refusal of it is counted)."""
    if isinstance(write, BatchWrite):
        return write.batch.gateway
    if isinstance(write, ControlWrite):
        return write.record.stamp.gateway
    return write.gateway


def keys_in_order(writes: Sequence[Write]) -> tuple[dict[Key, int], list[int]]:
    """The first write of each key (key -> index in ``writes``) and the indexes of the later ones:
    those are duplicates within the group, as they would be stored one by one."""
    first: dict[Key, int] = {}
    repeated: list[int] = []
    for i, write in enumerate(writes):
        key = key_of(write)
        if key is None:
            continue
        if key in first:
            repeated.append(i)
        else:
            first[key] = i
    return first, repeated


def counts(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str, int]]:
    """``(a, b)`` pairs as ``(a, b, how many)``, sorted (a stable lock order across workers)."""
    return [(a, b, n) for (a, b), n in sorted(Counter(pairs).items())]
