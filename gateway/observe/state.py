"""Build the typed :class:`~gateway.observe.snapshot.Snapshot` from the parts, on the event loop.

:class:`GatewayState` is given the parts it reads at construction and only reads them: each
block is taken from its owner (the buffer, the uplink link, the command router, ...) and copied.
It also builds the local status document (:meth:`GatewayState.status`): the snapshot plus what only
a local operator needs. :class:`Outage` is the one owner of "since when is the uplink down".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from bridge.uplink.downlink import DownlinkRouter
from bridge.uplink.forwarder import Forwarder
from bridge.uplink.link import UplinkLink
from bridge.uplink.store import Lane
from gateway.config import GatewayConfig
from gateway.control.commands import CommandRouter
from gateway.control.config_push import ConfigPusher
from gateway.files.device_intake import DeviceIntake
from gateway.files.download import Downloads
from gateway.files.uploads import Uploads
from gateway.observe.accounting import Accounting
from gateway.observe.delivery import DeliveryAccounting
from gateway.observe.snapshot import (
    BudgetBlock,
    ClockBlock,
    CommandsBlock,
    ConfigPushBlock,
    DeviceFilesBlock,
    DiskBlock,
    DownloadsBlock,
    DrainBlock,
    FilesUpBlock,
    LaneBlock,
    ReadyBlock,
    SecurityBlock,
    Snapshot,
    UplinkBlock,
    frozen_counts,
)
from gateway.process.clock import ClockGuard
from gateway.process.processor import Processor
from gateway.process.rejects import RejectLog
from gateway.source.ingest import Ingest
from gateway.source.local import LocalSide
from gateway.store.buffer import DiskBuffer
from gateway.store.lanes import LaneWriter

LANES: tuple[Lane, ...] = ("control", "telemetry")


class Outage:
    """How long the uplink has been down: from start until it first connects, then from each loss."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._mono = monotonic
        self._since: float | None = monotonic()

    def changed(self, up: bool) -> None:
        self._since = None if up else self._mono()

    def offline_s(self) -> float:
        """Seconds since the uplink went down; 0 while it is up."""
        return 0.0 if self._since is None else round(self._mono() - self._since, 3)


@dataclass(frozen=True)
class GatewayState:
    cfg: GatewayConfig
    accounting: Accounting
    delivery: DeliveryAccounting
    rejects: RejectLog
    buffer: DiskBuffer
    lanes: LaneWriter
    link: UplinkLink
    forwarder: Forwarder
    outage: Outage
    local: LocalSide
    ingest: Ingest
    processor: Processor
    commands: CommandRouter
    downlink: DownlinkRouter
    config_pusher: ConfigPusher
    clock: ClockGuard
    device_files: DeviceIntake
    uploads: Uploads | None = None
    downloads: Downloads | None = None

    def snapshot(self) -> Snapshot:
        """On the event loop: every figure, copied."""
        buf, embedded = self.buffer, self.local.embedded
        return Snapshot(
            gateway=self.cfg.gateway.id,
            accounting=self.accounting.snapshot(),
            rejects=frozen_counts(self.rejects.counts),
            buffer=MappingProxyType({lane: LaneBlock(buf.depth(lane), buf.bytes_used(lane), buf.readings(lane))
                                     for lane in LANES}),
            disk=self._disk(),
            uplink=self._uplink(),
            budget=MappingProxyType({lane: BudgetBlock(b.max_bytes, b.max_age_s) for lane, b in (
                ("control", self.cfg.buffer.control), ("telemetry", self.cfg.buffer.telemetry))}),
            connected_clients=len(embedded.connected_clients()) if embedded is not None else None,
            alert_latency=self.delivery.alert_latency.snapshot(),
            ingest_queue=len(self.ingest),
            commands=self._commands(),
            internal_errors=self.processor.internal_errors + (embedded.hook_errors if embedded is not None else 0)
            + (self.downloads.internal_errors if self.downloads is not None else 0),
            config_version=self.config_pusher.version,
            config_push=ConfigPushBlock(**self.config_pusher.snapshot()),
            security=self.security(),
            device_files=self._device_files(),
            ready=self.readiness(),
            clock=ClockBlock(**self.clock.snapshot()),
            files_up=self._files_up(),
            downloads=self._downloads(),
        )

    def document(self) -> dict[str, Any]:
        """The snapshot as the JSON-ready document of the ``stats`` message."""
        return self.snapshot().as_dict()

    def status(self) -> dict[str, Any]:
        """The document plus what only a local operator needs: who is connected, what was rejected."""
        embedded = self.local.embedded
        return {**self.document(),
                "connected_devices": embedded.connected_clients() if embedded is not None else None,
                "last_rejects": self.rejects.recent()}

    def _device_files(self) -> DeviceFilesBlock:
        counts = self.device_files.counts()
        return DeviceFilesBlock(**{**counts, "rejected": frozen_counts(counts["rejected"])})

    def readiness(self) -> ReadyBlock:
        """The local broker listening (embedded) or connected (external), and the buffer open."""
        return ReadyBlock(local_broker=self.local.ready, buffer=self.buffer.is_open)

    def security(self) -> SecurityBlock:
        store, embedded = self.local.credentials, self.local.embedded
        return SecurityBlock(
            auth=self.cfg.local_broker.auth.mode, denied=frozen_counts(self.local.denials.counts),
            authenticated_connects=embedded.authenticated_connects if embedded is not None else 0,
            devices_with_password=len(store.verifier) if store else 0,
            revoked_certificates=len(store.revoked) if store else 0,
            credential_reloads=store.reloads if store else 0,
            credential_reload_errors=store.reload_errors if store else 0)

    def _disk(self) -> DiskBlock:
        buf = self.buffer
        return DiskBlock(
            full_events=buf.disk_full_events, control_held_in_memory=self.lanes.held_control,
            unclean_start=buf.unclean_start, unclean_starts=buf.unclean_starts,
            skipped_seqs=MappingProxyType({lane: tuple(r) for lane, r in buf.skipped_seqs.items()}),
            stream=buf.stream, new_stream_reason=buf.new_stream_reason)

    def _uplink(self) -> UplinkBlock:
        link = self.link
        return UplinkBlock(
            connected=link.connected, endpoint=link.active_url, connects=link.connects,
            watchdog_trips=link.watchdog_trips, last_error=link.last_error, previous_error=link.previous_error,
            drain=DrainBlock.at_rate(self.buffer.readings("telemetry"), self.forwarder.backlog_rate.rate()),
            offline_s=self.outage.offline_s())

    def _files_up(self) -> FilesUpBlock | None:
        if self.uploads is None:
            return None
        c, up = self.uploads.counters, self.uploads.uploader
        return FilesUpBlock(
            transfers=len(up.transfers), sending_bytes=up.bytes_on_disk,
            waiting_for_space=self.uploads.outbox.waiting_for_space, queued=c.files_queued, sent=c.files_sent,
            stored=c.files_stored, failed=c.files_failed, expired=c.files_expired, chunks_sent=c.chunks_sent,
            chunks_resent=c.chunks_resent, manifests_sent=c.manifests_sent, bytes=c.bulk_bytes, receipts=c.receipts,
            rejected=frozen_counts(c.rejected), receipts_rejected=frozen_counts(c.receipts_rejected),
            chunks_read_ahead=c.chunks_read_ahead, not_taken=c.not_taken, scan_errors=c.scan_errors)
    def _downloads(self) -> DownloadsBlock:
        if self.downloads is None:
            return DownloadsBlock()
        d = self.downloads.snapshot()
        return DownloadsBlock(**{**d, "failed": frozen_counts(d["failed"]), "rejected": frozen_counts(d["rejected"])})

    def _commands(self) -> CommandsBlock:
        c = self.commands.counters
        return CommandsBlock(
            received=c.received, forwarded=c.forwarded, held=self.commands.held, duplicates=c.duplicates,
            answered=frozen_counts(c.answered), rejected=frozen_counts(c.rejected),
            responses_matched=c.responses_matched, responses_unmatched=c.responses_unmatched,
            responses_forged=c.responses_forged, forgotten=c.forgotten, ignored=frozen_counts(c.ignored),
            round_trip=self.commands.round_trip.snapshot(), cleared=self.downlink.cleared)
