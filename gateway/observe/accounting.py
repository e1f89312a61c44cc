"""Per-reading accounting and the gateway's counters.

Every reading that enters is, at any moment, in exactly one state::

    readings_in + restored == delivered + filtered + dropped + buffered + pending

``restored`` is what an earlier run left on disk. ``filtered`` and ``dropped`` are broken down by
reason. ``buffered`` is on disk waiting for the cloud's PUBACK, ``pending`` is in the open batch in
memory: those three are read at any moment from their owners, through the functions given at
construction. Counters are plain integers on the hot path; the loop publishes a frozen snapshot of
them (:class:`~gateway.observe.snapshot.AccountingBlock`) that :mod:`gateway.observe.metrics` serves
to Prometheus.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.observe.snapshot import AccountingBlock, frozen_counts

# Drop reasons that are not decode rejections (those are named in gateway.process.decode).
INGEST_OVERFLOW = "ingest_overflow"
BUFFER_OVERFLOW = "overflow"
DISK_FULL = "disk_full"
EXPIRED = "expired"
REJECTED_BY_BROKER = "rejected_by_broker"
DISK_ERROR = "disk_error"
ENCODE_ERROR = "encode_error"
INTERNAL_ERROR = "internal_error"
DROP_REASONS = (INGEST_OVERFLOW, BUFFER_OVERFLOW, DISK_FULL, EXPIRED, REJECTED_BY_BROKER, DISK_ERROR, ENCODE_ERROR,
                INTERNAL_ERROR)
CONTROL_DROP_REASONS = (EXPIRED, REJECTED_BY_BROKER, DISK_ERROR, ENCODE_ERROR)  # never for capacity


@dataclass
class Accounting:
    readings_in: int = 0
    delivered: int = 0
    filtered: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    messages_in: int = 0
    batches_written: int = 0
    batches_delivered: int = 0
    bytes_up_telemetry: int = 0
    bytes_up_control: int = 0
    alerts: int = 0
    events: int = 0
    responses: int = 0
    control_written: int = 0
    control_delivered: int = 0
    control_dropped: Counter[str] = field(default_factory=Counter)
    # where the states that live elsewhere are read: on disk (the buffer), in the open batch (the
    # batcher), restored at start (the buffer); given at construction
    buffered_fn: Callable[[], int] = lambda: 0
    pending_fn: Callable[[], int] = lambda: 0
    restored_fn: Callable[[], int] = lambda: 0

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def filter(self, reason: str, n: int = 1) -> None:
        self.filtered[reason] += n

    @property
    def restored(self) -> int:
        return self.restored_fn()

    @property
    def buffered(self) -> int:
        return self.buffered_fn()

    @property
    def pending(self) -> int:
        return self.pending_fn()

    def balance(self) -> int:
        """Zero when every reading is accounted for."""
        return self.readings_in + self.restored - (
            self.delivered + sum(self.filtered.values()) + sum(self.dropped.values()) + self.buffered + self.pending
        )

    def snapshot(self) -> AccountingBlock:
        """Every figure of :class:`AccountingBlock`, copied (counters into read-only mappings)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(AccountingBlock):
            value = getattr(self, f.name)
            values[f.name] = frozen_counts(value) if isinstance(value, Counter) else value
        return AccountingBlock(**values)
