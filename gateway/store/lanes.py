"""Lane writer: encode telemetry batches and control records and persist them in their lane.

Control records are small JSON objects written one by one; telemetry batches are msgpack
envelopes. Both get the lane's next sequence number from the buffer inside the same write, and
the buffer's stream id.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from bridge.protocol.codec import CodecError, Compression, encode_batch
from bridge.protocol.model import Reading
from bridge.protocol.records import ControlRecord, Stamp, encode_control
from bridge.protocol.topics import CloudTopics
from bridge.uplink.store import Record
from gateway.errors import StorageError
from gateway.observe.accounting import DISK_ERROR, ENCODE_ERROR, Accounting
from gateway.store.buffer import DiskBuffer

log = logging.getLogger(__name__)

MAX_HELD_CONTROL = 10_000  # control records kept in memory while the disk refuses writes


def drop_counter(accounting: Accounting) -> Callable[[Record, str], None]:
    """The buffer's ``on_dropped``: count each record it removes without an ack (``overflow``,
    ``disk_full``, ``expired`` or ``disk_error``)."""

    def count_dropped(rec: Record, reason: str) -> None:
        if rec.lane == "telemetry":
            accounting.drop(reason, rec.readings)
            log.warning("dropped telemetry batch seq=%d (%d readings): %s", rec.seq, rec.readings, reason)
        else:
            accounting.control_dropped[reason] += 1

    return count_dropped


class LaneWriter:
    def __init__(
        self,
        buffer: DiskBuffer,
        topics: CloudTopics,
        accounting: Accounting,
        *,
        compression: Compression,
        level: int,
        on_written: Callable[[], None],
    ) -> None:
        self._buffer = buffer
        self._topics = topics
        self._acc = accounting
        self.compression: Compression = compression
        self.level = level
        self._on_written = on_written
        self._held: deque[tuple[str, str, Callable[[int], bytes]]] = deque()

    def write_batch(self, readings: list[Reading]) -> None:
        gw = self._topics.gateway_id
        stream = self._buffer.stream

        def build(seq: int) -> bytes:
            return encode_batch(gw, seq, readings, stream=stream, created_ms=int(time.time() * 1000),
                                compression=self.compression, level=self.level)

        try:
            self._buffer.append("telemetry", self._topics.telemetry, build, len(readings))
        except StorageError as exc:
            log.error("telemetry batch of %d readings lost: %s", len(readings), exc)
            self._acc.drop(DISK_ERROR, len(readings))
            return
        except (CodecError, ValueError, TypeError, OverflowError) as exc:
            log.error("telemetry batch of %d readings could not be encoded: %s", len(readings), exc)
            self._acc.drop(ENCODE_ERROR, len(readings))
            return
        self._acc.batches_written += 1
        self._on_written()

    def write_control(self, record: ControlRecord) -> None:
        kind = record.kind
        topic = self._topics.control(kind)
        gw = self._topics.gateway_id
        stream = self._buffer.stream

        def build(seq: int) -> bytes:
            return encode_control(record, Stamp(gw, seq, stream))

        if self._held:  # keep control records in order behind those waiting for the disk
            self._hold(kind, topic, build)
            return
        self._write_control(kind, topic, build)

    def _write_control(self, kind: str, topic: str, build: Callable[[int], bytes]) -> bool:
        """Write one control record; a disk that refuses it gets it held in memory and written
        later (:meth:`retry_held`). False if it could not be written now."""
        try:
            self._buffer.append("control", topic, build, 0)
        except StorageError as exc:
            log.error("control record (%s) cannot be written yet, held in memory: %s", kind, exc)
            self._hold(kind, topic, build)
            return False
        except (CodecError, ValueError, TypeError, OverflowError) as exc:
            log.error("control record (%s) could not be encoded: %s", kind, exc)
            self._acc.control_dropped[ENCODE_ERROR] += 1
            return True
        self._acc.control_written += 1
        self._on_written()
        return True

    def _hold(self, kind: str, topic: str, build: Callable[[int], bytes]) -> None:
        if len(self._held) >= MAX_HELD_CONTROL:
            log.error("control record (%s) lost: %d records already wait for the disk", kind, len(self._held))
            self._acc.control_dropped[DISK_ERROR] += 1
            return
        self._held.append((kind, topic, build))

    def retry_held(self) -> None:
        """Write control records held while the disk refused them, oldest first."""
        while self._held:
            kind, topic, build = self._held.popleft()
            if not self._write_control(kind, topic, build):
                # _write_control put it at the back: move it back to the front, keep the order
                self._held.appendleft(self._held.pop())
                return

    @property
    def held_control(self) -> int:
        return len(self._held)

    def housekeeping(self) -> None:
        """Periodic: expire old records, write control records held for the disk, and move
        write-behind batches that are still unacknowledged to disk."""
        self._buffer.expire()
        self.retry_held()
        try:
            self._buffer.persist_due()
        except StorageError as exc:  # they stay in memory and are tried again next time
            log.warning("write-behind batches not written yet: %s", exc)

