"""Group commit: the messages that arrive while the sink is busy are stored together, in one
transaction, then acknowledged together, in arrival order.

A message joins the pending list of its connection and a flush is scheduled on the event loop
(``call_soon``, no timer): at low load a flush finds one message and stores it at once, so nothing
waits for a group to fill; under load, the messages that paho handed over while the previous flush
was committing are all pending when the next one runs. A flush takes at most
:attr:`GroupLimits.max_messages` messages and stops adding once :attr:`GroupLimits.max_readings`
readings are in (a single larger batch still goes alone), stores them in ONE transaction
(:meth:`~bridge.cloud.sink_handler.SinkHandler.commit`), and only then sends their PUBACKs, in the
order the PUBLISHes came (MQTT wants them in that order for QoS 1).

Guarantees, per message as before: a message that cannot be stored (undecodable, wrong gateway,
malformed, refused by the database) is counted by reason and acknowledged without holding back the
others of its group. A storage failure rolls back the whole group: none of it is acknowledged, the
connection is dropped and the broker redelivers the group (and whatever else it had sent) on the next
session, where the store's key drops what had been stored before.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from bridge.cloud.errors import SinkStoreError
from bridge.cloud.sink_handler import Prepared, SinkHandler
from bridge.cloud.sink_writes import BatchWrite
from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import Message

__all__ = ["GroupCommit", "GroupLimits"]

log = logging.getLogger("bridge.cloud.sink")


@dataclass(frozen=True)
class GroupLimits:
    """How much one transaction takes at most: messages, and readings (checked after each message)."""

    max_messages: int = 500
    max_readings: int = 50_000

    def __post_init__(self) -> None:
        if self.max_messages < 1 or self.max_readings < 1:
            raise ValueError(f"group limits must be positive: {self}")


class GroupCommit:
    """The pending messages of one connection and their flushes, on the event loop."""

    def __init__(self, handler: SinkHandler, conn: MqttConnection, limits: GroupLimits) -> None:
        self._handler = handler
        self._conn = conn
        self._limits = limits
        self._pending: deque[Message] = deque()
        self._scheduled = False
        self.failed = False
        """A group could not be stored: the connection was dropped, nothing more is taken."""
        self._closed = False

    def add(self, message: Message) -> None:
        if self.failed or self._closed:
            return  # never acknowledged: the broker redelivers it on the next session
        self._pending.append(message)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def close(self) -> None:
        """Drop what is pending (unacknowledged, so redelivered) and store nothing more."""
        self._closed = True
        self._pending.clear()

    def _take(self) -> list[Prepared]:
        group: list[Prepared] = []
        readings = 0
        limits, counters = self._limits, self._handler.counters
        while self._pending and len(group) < limits.max_messages and readings < limits.max_readings:
            message = self._pending.popleft()
            try:
                prepared = self._handler.prepare(message)
            except Exception:  # the loop's one catch-all: a poison message must not wedge the subscription
                counters.invalid_reasons["internal error"] += 1
                log.exception("unexpected failure handling a message on %r; acknowledged and dropped",
                              message.topic)
                prepared = Prepared(message, None)
            group.append(prepared)
            if isinstance(prepared.write, BatchWrite):
                readings += len(prepared.write.batch.readings)
        return group

    def _flush(self) -> None:
        self._scheduled = False
        if self.failed or self._closed or not self._pending:
            return
        group = self._take()
        committed = False
        try:
            self._handler.commit(group)
            committed = True
        except SinkStoreError as exc:
            log.error("cannot store a group of %d messages (%s); dropping the connection for redelivery",
                      len(group), exc)
        finally:
            if not committed:  # also for an unexpected error, which propagates to the loop's handler
                self._fail()
        if not committed:
            return
        for prepared in group:
            self._conn.ack(prepared.message)
        counters = self._handler.counters
        counters.handled += len(group)
        counters.groups += 1
        counters.largest_group = max(counters.largest_group, len(group))
        if self._pending:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _fail(self) -> None:
        self.failed = True
        self._handler.counters.store_errors += 1
        self._pending.clear()
        self._conn.abort()
