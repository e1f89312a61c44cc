"""The gateway's state at one moment, typed: one frozen dataclass per block.

:class:`gateway.observe.state.GatewayState` builds a :class:`Snapshot` on the event loop (the only
thread that touches the parts). Every block holds copies only (counts in read-only mappings,
sequences in tuples), so the snapshot can be handed to another thread as it is: the Prometheus
endpoint reads its attributes (:mod:`gateway.observe.metrics`).

:meth:`Snapshot.as_dict` is the JSON document of the ``stats`` message, the status file and the
lab (documented in docs/PROTOCOL.md): the keys are the field names, in field order, so the field
order below is part of the contract.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

Counts = Mapping[str, int]


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


def frozen_counts(counts: Mapping[str, int]) -> Counts:
    """A read-only copy of a counter (a later count does not change it)."""
    return MappingProxyType(dict(counts))


def to_plain(value: Any) -> Any:
    """Dataclasses and mappings as dicts (keys in field order), tuples as lists: JSON-ready."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class HistogramBlock:
    """``buckets``: ``(upper bound, cumulative count)`` pairs ending with ``"+Inf"``; seconds."""

    buckets: tuple[tuple[str, int], ...] = ()
    sum_s: float = 0.0
    count: int = 0


@dataclass(frozen=True)
class AccountingBlock:
    """See :mod:`gateway.observe.accounting` for the identity these figures satisfy."""

    readings_in: int = 0
    restored: int = 0
    delivered: int = 0
    filtered: Counts = field(default_factory=_empty)
    dropped: Counts = field(default_factory=_empty)
    buffered: int = 0
    pending: int = 0
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
    control_dropped: Counts = field(default_factory=_empty)


@dataclass(frozen=True)
class LaneBlock:
    """One lane of the disk buffer."""

    records: int = 0
    bytes: int = 0
    readings: int = 0


@dataclass(frozen=True)
class DiskBlock:
    full_events: int = 0
    control_held_in_memory: int = 0
    unclean_start: bool = False
    unclean_starts: int = 0
    skipped_seqs: Mapping[str, tuple[int, ...]] = field(default_factory=_empty)
    stream: str = ""
    new_stream_reason: str = ""


@dataclass(frozen=True)
class DrainBlock:
    """``eta_s``: time to empty the telemetry backlog at ``rate_readings_s`` (None while nothing drains)."""

    backlog_readings: int = 0
    rate_readings_s: float = 0.0
    eta_s: float | None = None

    @classmethod
    def at_rate(cls, backlog: int, rate: float) -> DrainBlock:
        return cls(backlog, round(rate, 1), round(backlog / rate, 1) if rate > 0 and backlog else None)


@dataclass(frozen=True)
class UplinkBlock:
    connected: bool = False
    endpoint: str | None = None
    connects: int = 0
    watchdog_trips: int = 0
    last_error: str = ""
    previous_error: str = ""
    drain: DrainBlock = DrainBlock()
    offline_s: float = 0.0


@dataclass(frozen=True)
class BudgetBlock:
    max_bytes: int
    max_age_s: float | None


@dataclass(frozen=True)
class CommandsBlock:
    received: int = 0
    forwarded: int = 0
    held: int = 0
    duplicates: int = 0
    answered: Counts = field(default_factory=_empty)
    rejected: Counts = field(default_factory=_empty)
    responses_matched: int = 0
    responses_unmatched: int = 0
    responses_forged: int = 0
    forgotten: int = 0
    ignored: Counts = field(default_factory=_empty)
    round_trip: HistogramBlock = HistogramBlock()
    cleared: int = 0


@dataclass(frozen=True)
class ConfigPushBlock:
    applied: int = 0
    rejected: int = 0
    stale: int = 0
    load_errors: int = 0
    cleared: int = 0


@dataclass(frozen=True)
class DownloadsBlock:
    received: int = 0
    received_again: int = 0
    failed: Counts = field(default_factory=_empty)
    rejected: Counts = field(default_factory=_empty)
    chunks: int = 0
    duplicates: int = 0
    bytes: int = 0
    missing_sent: int = 0
    unanswered: int = 0
    in_progress: int = 0
    bytes_in_use: int = 0


@dataclass(frozen=True)
class SecurityBlock:
    auth: str = "none"
    denied: Counts = field(default_factory=_empty)
    authenticated_connects: int = 0
    devices_with_password: int = 0
    revoked_certificates: int = 0
    credential_reloads: int = 0
    credential_reload_errors: int = 0


@dataclass(frozen=True)
class DeviceFilesBlock:
    """Files devices send on the local broker (gateway/files/device_intake.py)."""

    files: int = 0  # verified and handed on
    chunks: int = 0  # written (duplicates not counted)
    bytes: int = 0
    duplicates: int = 0  # chunks and manifests of files already here
    under_way: int = 0
    queued: int = 0
    rejected: Counts = field(default_factory=_empty)  # by reason
    answers_failed: int = 0  # status answers the local broker did not take
    internal_errors: int = 0


@dataclass(frozen=True)
class ReadyBlock:
    """What /readyz requires (the uplink is reported but not required: the buffer covers it)."""

    local_broker: bool = False
    buffer: bool = False

    def all(self) -> bool:
        return self.local_broker and self.buffer


@dataclass(frozen=True)
class ClockBlock:
    synced: bool = False
    floor_date: str = ""
    sync_file: str | None = None
    jumps: int = 0
    last_jump_s: float | None = None
    receive_stamped_unsynced: int = 0
    window_not_judged: int = 0


@dataclass(frozen=True)
class FilesUpBlock:
    """Uploads (gateway -> cloud, :mod:`gateway.files`); counters since start."""

    transfers: int = 0  # under way: in sending/, not yet stored, failed or expired
    sending_bytes: int = 0
    waiting_for_space: int = 0  # outbox files that do not fit files.max_disk_bytes yet
    queued: int = 0
    sent: int = 0
    stored: int = 0
    failed: int = 0
    expired: int = 0
    chunks_sent: int = 0
    chunks_resent: int = 0
    manifests_sent: int = 0
    bytes: int = 0
    receipts: int = 0
    rejected: Counts = field(default_factory=_empty)
    receipts_rejected: Counts = field(default_factory=_empty)
    chunks_read_ahead: int = 0  # chunks read and hashed in the worker thread before they were wanted
    not_taken: int = 0  # outbox files left for the next scan (unreadable, the upload state not writable)
    scan_errors: int = 0


@dataclass(frozen=True)
class Snapshot:
    gateway: str
    accounting: AccountingBlock = AccountingBlock()
    rejects: Counts = field(default_factory=_empty)
    buffer: Mapping[str, LaneBlock] = field(default_factory=_empty)
    disk: DiskBlock = DiskBlock()
    uplink: UplinkBlock = UplinkBlock()
    budget: Mapping[str, BudgetBlock] = field(default_factory=_empty)
    connected_clients: int | None = None  # None with an external local broker (its clients are not visible)
    alert_latency: HistogramBlock = HistogramBlock()
    ingest_queue: int = 0
    commands: CommandsBlock = CommandsBlock()
    internal_errors: int = 0
    config_version: int = 0
    config_push: ConfigPushBlock = ConfigPushBlock()
    security: SecurityBlock = SecurityBlock()
    device_files: DeviceFilesBlock = DeviceFilesBlock()
    ready: ReadyBlock = ReadyBlock()
    clock: ClockBlock = ClockBlock()
    files_up: FilesUpBlock | None = None  # None when files.enabled is false
    downloads: DownloadsBlock = DownloadsBlock()

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready document (``stats`` message, status file)."""
        doc: dict[str, Any] = to_plain(self)
        return doc
