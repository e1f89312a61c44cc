"""What the gateway counts when a record leaves the buffer or a message never enters it.

:class:`DeliveryAccounting` is the accounting policy of the outcomes that happen outside the
pipeline: the forwarder reports each record the cloud broker acknowledged (``delivered``) or
refused for good (``rejected``), and ingest reports each message it had no room for
(``ingest_overflow``). It keeps the accounting identity of :mod:`gateway.observe.accounting` and the
alert delivery latency (an alert raised on the gateway -> the cloud broker's PUBACK, in seconds).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from bridge.uplink.store import Record
from gateway.observe.accounting import INGEST_OVERFLOW, REJECTED_BY_BROKER, Accounting
from gateway.observe.latency import LatencyHistogram
from gateway.process.rejects import RejectLog

log = logging.getLogger(__name__)


class DeliveryAccounting:
    def __init__(self, accounting: Accounting, rejects: RejectLog, alerts_topic: str,
                 wall: Callable[[], float] = time.time) -> None:
        self._acc = accounting
        self._rejects = rejects
        self._alerts_topic = alerts_topic
        self._wall = wall
        self.alert_latency = LatencyHistogram()

    def delivered(self, rec: Record, size: int) -> None:
        """The cloud broker acknowledged ``rec`` (``size`` payload bytes)."""
        acc = self._acc
        if rec.topic == self._alerts_topic:  # raised on the gateway -> the cloud's PUBACK
            self.alert_latency.observe(self._wall() - rec.created_ms / 1000.0)
        if rec.lane == "telemetry":
            acc.delivered += rec.readings
            acc.batches_delivered += 1
            acc.bytes_up_telemetry += size
        else:
            acc.control_delivered += 1
            acc.bytes_up_control += size

    def rejected(self, rec: Record, why: str) -> None:
        """The cloud broker refused ``rec`` for good: its readings (or the control record) are dropped."""
        log.error("record %s dropped: %s", rec.key, why)
        if rec.lane == "telemetry":
            self._acc.drop(REJECTED_BY_BROKER, rec.readings)
        else:
            self._acc.control_dropped[REJECTED_BY_BROKER] += 1

    def ingest_overflow(self, topic: str) -> None:
        """Ingest had no room for a message on ``topic``: it counts as one reading, dropped."""
        self._acc.readings_in += 1
        self._acc.drop(INGEST_OVERFLOW)
        self._rejects.add(topic, INGEST_OVERFLOW, "ingest queue full")
