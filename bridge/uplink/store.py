"""What the forwarder needs from a durable record store (the gateway's disk buffer implements it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from bridge.mqtt.errors import TransientBridgeError
from bridge.protocol.model import LANES, Lane

__all__ = ["LANES", "Lane", "Record", "RecordStore", "Source", "StoreError"]

Source = Literal["any", "live", "backlog"]


class StoreError(TransientBridgeError):
    """The store could not read or delete a record (disk full, I/O error); retry later."""


@dataclass(frozen=True)
class Record:
    """One uplink message as stored on disk: a whole telemetry batch, or one control record."""

    key: str
    lane: Lane
    seq: int
    topic: str
    payload: bytes
    readings: int
    created_ms: int
    replay: bool = False  # backlog: restored from disk, released after a failed send, or waiting at reconnect


class RecordStore(Protocol):
    """Records leave the store only through :meth:`ack`; :meth:`take` lends them out in order."""

    def take(self, lane: Lane, limit: int, source: Source = "any") -> list[Record]:
        """Up to ``limit`` oldest records of ``lane`` not already taken; marks them taken.

        ``source`` narrows it to ``live`` records (written since the connection came up and never
        sent) or ``backlog`` records (everything else, sent with the replay flag)."""
        ...

    def release(self, key: str) -> None:
        """Sending failed: the record is available again, keeps its place and is flagged replay."""
        ...

    def mark_backlog(self) -> None:
        """Flag every waiting record as replay (called when a connection comes up)."""
        ...

    def ack(self, key: str) -> Record | None:
        """The cloud broker acknowledged the record: delete it from disk and return it."""
        ...

    def ack_many(self, keys: list[str]) -> dict[str, Record]:
        """:meth:`ack` for several records in one write; returns those that were deleted."""
        ...

    def depth(self, lane: Lane) -> int:
        """Records of ``lane`` on disk, taken or not."""
        ...

    def available(self, lane: Lane, source: Source = "any") -> int:
        """Records of ``lane`` that :meth:`take` could return now."""
        ...
