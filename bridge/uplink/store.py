"""The port between the forwarder and the durable record store (the gateway's disk buffer
implements it): what a record is, and what the forwarder may ask of the store.

The store is the one owner of the state of its records: their order, which ones are in flight
(*leased* by :meth:`RecordStore.take` until released or acknowledged), and which ones are backlog
(the replay flag). The forwarder keeps none of it; it asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from bridge.protocol.errors import TransientBridgeError
from bridge.protocol.model import LANES, Lane

__all__ = ["LANES", "Lane", "Record", "RecordStore", "Source", "StoreError"]

Source = Literal["any", "live", "backlog"]


class StoreError(TransientBridgeError):
    """The store could not read or delete a record (disk full, I/O error); retry later. The only
    error a :class:`RecordStore` raises."""


@dataclass(frozen=True)
class Record:
    """One uplink message as stored: a whole telemetry batch, or one control record."""

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
        """Up to ``limit`` oldest records of ``lane`` not in flight; leases them (in flight).

        ``source`` narrows it to ``live`` records (written since the connection came up and never
        sent) or ``backlog`` records (everything else, sent with the replay flag)."""
        ...

    def release(self, key: str) -> None:
        """Sending failed: the record is no longer in flight, keeps its place and is flagged replay."""
        ...

    def release_all(self) -> int:
        """:meth:`release` every record in flight (the connection ended); returns how many."""
        ...

    def mark_backlog(self) -> None:
        """Flag every waiting record as replay (called when a connection comes up)."""
        ...

    def ack(self, *keys: str) -> dict[str, Record]:
        """The cloud broker acknowledged (or refused for good) these records: delete them, all in
        one write, and return those deleted by key (without their payload)."""
        ...

    def depth(self, lane: Lane) -> int:
        """Records of ``lane`` held, in flight or not."""
        ...

    def available(self, lane: Lane, source: Source = "any") -> int:
        """Records of ``lane`` that :meth:`take` could return now."""
        ...

    def in_flight(self, lane: Lane, source: Source = "any") -> int:
        """Records of ``lane`` taken and not yet released or acknowledged (``live``: taken as live
        records; ``backlog``: taken with the replay flag)."""
        ...

    def oldest_lease_s(self) -> float:
        """How long the record longest in flight has been out (0 when none is)."""
        ...
