"""The bulk lane: the port between the forwarder and a source of bulk messages (file chunks), and
the small scheduler that sends them with the slots and bytes the other lanes leave.

The source is the one owner of its items' state (what is waiting, what is in flight, what was sent
before); the forwarder asks it, like it asks the :class:`~bridge.uplink.store.RecordStore`:
:meth:`BulkSource.take` lends items out, :meth:`BulkSource.settle` returns each one after its PUBACK
(``ok``) or a failure (an attempt: the source gives up after its limit), :meth:`BulkSource.reject`
after a permanent refusal, :meth:`BulkSource.release_all` takes back everything in flight when a
connection ends (sent again later, flagged as a resend by the source). After any failed publish the
lane pauses for a second.

The lane (:class:`BulkLane`) goes last: only while no control record waits and no live telemetry
batch waits, never into the connection slots reserved for control and for telemetry, with its own
window and its own byte-rate cap on top of the uplink-wide one. Under the uplink-wide cap it never
borrows: an item goes only when the shared bucket holds all of it plus half the bucket (kept for
telemetry), so a chunk never leaves live telemetry waiting for the bucket to refill. With a cap
set, at most about one second of the (lowest) cap is in flight (at least one item), so a chunk
queued in the socket delays a later control record by at most that. Bulk is always QoS 1.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.errors import BridgeError, ConnectionLost, PublishRejected, UplinkBusy
from bridge.uplink.pacing import TokenBucket

log = logging.getLogger(__name__)

BULK_QOS = 1
IN_FLIGHT_S = 1.0  # with a byte-rate cap: seconds of it bulk may have in flight
RETRY_PAUSE_S = 1.0  # after a failed publish: the lane waits, it never spins on a refusal

__all__ = ["BULK_QOS", "BulkItem", "BulkLane", "BulkPolicy", "BulkSource"]


@dataclass(frozen=True)
class BulkItem:
    """One bulk message: ``key`` names it to its source (e.g. ``{file id}/{chunk index}``)."""

    key: str
    topic: str
    payload: bytes


class BulkSource(Protocol):
    """What the forwarder may ask of a bulk source. Runs on the event loop; never raises."""

    def available(self) -> int:
        """Items :meth:`take` could return now."""
        ...

    def take(self, limit: int) -> list[BulkItem]:
        """Up to ``limit`` items to publish, in the order they should go; they are in flight until
        settled or released."""
        ...

    def settle(self, key: str, ok: bool) -> None:
        """The broker acknowledged the item (``ok``) or its publish failed (not ``ok``: send it again
        later, counting the attempt)."""
        ...

    def reject(self, key: str, reason: str) -> None:
        """The broker refused the item for good (not authorized, packet too large): sending it
        again cannot help, the source gives it up."""
        ...

    def release(self, key: str) -> None:
        """The item was not sent after all (the connection would not take it): it waits again,
        no attempt counted."""
        ...

    def release_all(self) -> int:
        """The connection ended: everything in flight goes back (and is sent again, as a resend);
        returns how many."""
        ...

    def in_flight(self) -> int:
        """Items taken and not yet settled or released."""
        ...


@dataclass(frozen=True)
class BulkPolicy:
    window: int = 2  # items in flight
    max_bytes_per_s: float = 0.0  # the lane's own cap; 0 = none (the uplink-wide cap applies too)
    burst_bytes: int = 65536
    item_bytes: int = 65536 + 1024  # the largest item (a chunk with its header and topic): what a cap must hold


class BulkLane:
    """Sends a :class:`BulkSource`'s items over one connection at a time (see the module doc)."""

    def __init__(self, source: BulkSource, policy: BulkPolicy, *, on_settled: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.policy = policy
        self._bucket = TokenBucket(policy.max_bytes_per_s, max(policy.burst_bytes, policy.max_bytes_per_s), clock) \
            if policy.max_bytes_per_s > 0 else None
        self._on_settled = on_settled
        self._clock = clock
        self._connection = 0
        self._sizes: dict[str, int] = {}  # in flight: bytes
        self._paused_until = 0.0
        self.sent = 0  # messages published
        self.bytes = 0  # payload bytes published
        self.acked = 0
        self.failed = 0

    def fill(self, conn: MqttConnection, free_slots: int, uplink: TokenBucket | None) -> float | None:
        """Publish what the window, ``free_slots`` (the connection slots the other lanes leave) and
        both byte caps allow. Returns when to look again if a cap holds items back."""
        if (pause := self._paused_until - self._clock()) > 0:
            return pause
        free = min(self.policy.window - self.source.in_flight(), free_slots)
        while free > 0 and self.source.available() > 0:
            if (wait := self._wait_s(uplink)) > 0:
                return wait
            if self._sizes and sum(self._sizes.values()) + self.policy.item_bytes > self._max_in_flight(uplink):
                return None  # about a second of the cap is on its way: the next PUBACK wakes us
            items = self.source.take(1)
            if not items:
                return None
            item = items[0]
            try:
                fut = conn.publish(item.topic, item.payload, BULK_QOS)
            except BridgeError as exc:
                if isinstance(exc, (UplinkBusy, ConnectionLost)):
                    self.source.release(item.key)  # never went out: no attempt spent
                else:
                    self.source.settle(item.key, False)
                log.debug("bulk publish of %s not sent: %s", item.key, exc)
                return None
            size = len(item.payload) + len(item.topic)
            for bucket in (self._bucket, uplink):
                if bucket is not None:
                    bucket.spend(size)
            self.sent += 1
            self.bytes += len(item.payload)
            self._sizes[item.key] = size
            fut.add_done_callback(functools.partial(self._done, self._connection, item.key))
            free -= 1
        return None

    def _wait_s(self, uplink: TokenBucket | None) -> float:
        """How long until both caps let the next item go (0 = now). The lane's own bucket is only
        bulk's and may go below zero; the shared one must hold the item and a telemetry reserve."""
        waits = [0.0]
        if self._bucket is not None:
            waits.append(self._bucket.wait_s())
        if uplink is not None:
            waits.append(uplink.wait_for_s(self.policy.item_bytes + uplink.burst / 2))
        return max(waits)

    def _max_in_flight(self, uplink: TokenBucket | None) -> float:
        """Bytes bulk may have in flight: about one second of the lowest cap (no bound without one)."""
        rates = [b.rate for b in (self._bucket, uplink) if b is not None]
        return min(rates) * IN_FLIGHT_S if rates else float("inf")

    def _done(self, connection: int, key: str, fut: asyncio.Future[None]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if connection != self._connection:
            return  # released when its connection ended
        self._sizes.pop(key, None)
        if fut.cancelled() or exc is not None:
            self.failed += 1
            self._paused_until = self._clock() + RETRY_PAUSE_S
            if isinstance(exc, PublishRejected) and exc.permanent:
                log.warning("broker refused %s for good: %s", key, exc)
                self.source.reject(key, f"refused by the broker: {exc.reason} (0x{exc.reason_code:02X})")
            else:  # "retry later" or lost: an attempt, counted against the source's limit
                log.warning("bulk publish of %s failed: %s", key, exc)
                self.source.settle(key, False)
        else:
            self.acked += 1
            self.source.settle(key, True)
        self._on_settled()

    def connection_ended(self) -> None:
        self._connection += 1
        self._sizes.clear()
        released = self.source.release_all()
        if released:
            log.info("%d bulk message(s) sent without a PUBACK go again on the next connection", released)
