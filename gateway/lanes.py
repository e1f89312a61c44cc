"""Lane writer: encode telemetry batches and control records and persist them in their lane.

Control records are small JSON objects written one by one; telemetry batches are msgpack
envelopes. Both get the lane's next sequence number from the buffer inside the same write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from bridge.codec import CodecError, Compression, encode_batch, encode_control
from bridge.model import Reading
from bridge.store import Record
from bridge.topics import CloudTopics
from gateway.accounting import DISK_ERROR, ENCODE_ERROR, Accounting
from gateway.buffer import DiskBuffer
from gateway.errors import StorageError

log = logging.getLogger(__name__)

_CONTROL_TOPICS = {"alert": "alerts", "event": "events", "response": "responses", "config_status": "config/status"}


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
        buffer.on_dropped = self.count_dropped

    def write_batch(self, readings: list[Reading]) -> None:
        gw = self._topics.gateway_id

        def build(seq: int) -> bytes:
            return encode_batch(gw, seq, readings, created_ms=int(time.time() * 1000),
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

    def write_control(self, kind: str, record: dict[str, Any]) -> None:
        topic = f"{self._topics.prefix}/{_CONTROL_TOPICS.get(kind, kind)}"
        gw = self._topics.gateway_id

        def build(seq: int) -> bytes:
            return encode_control({**record, "gw": gw, "seq": seq})

        try:
            self._buffer.append("control", topic, build, 0)
        except StorageError as exc:
            log.error("control record (%s) lost: %s", kind, exc)
            self._acc.control_dropped[DISK_ERROR] += 1
            return
        except (CodecError, ValueError, TypeError, OverflowError) as exc:
            log.error("control record (%s) could not be encoded: %s", kind, exc)
            self._acc.control_dropped[ENCODE_ERROR] += 1
            return
        self._acc.control_written += 1
        self._on_written()

    def expire(self) -> None:
        self._buffer.expire()

    def count_dropped(self, rec: Record, reason: str) -> None:
        """The buffer removed a record without an ack (``overflow`` or ``expired``): count it."""
        if rec.lane == "telemetry":
            self._acc.drop(reason, rec.readings)
            log.warning("dropped telemetry batch seq=%d (%d readings): %s", rec.seq, rec.readings, reason)
        else:
            self._acc.control_dropped[reason] += 1
