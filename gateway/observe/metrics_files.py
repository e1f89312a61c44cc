"""The file-transfer figures of a snapshot as metric specs (uploads, device files, downloads): what
each metric is called, what it says and its value. Free of prometheus_client: the collector in
:mod:`gateway.observe.metrics` turns each spec into its metric family."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from bridge.protocol import files as wire
from gateway.files.device_receiver import DEVICE_FILE_REASONS
from gateway.files.download import DOWNLOAD_REASONS
from gateway.observe.snapshot import DeviceFilesBlock, DownloadsBlock, FilesUpBlock, Snapshot

FILE_LABELS: dict[str, tuple[str, ...]] = {  # every label value, exported at 0 before its first event
    "edge_files_up_rejected": (wire.BAD_NAME, wire.MALFORMED, wire.TOO_LARGE),
    "edge_files_up_receipts_rejected": wire.REJECT_REASONS,
    "edge_device_file_rejections": DEVICE_FILE_REASONS,
    "edge_files_download_failed": DOWNLOAD_REASONS,
    "edge_files_download_rejected": DOWNLOAD_REASONS,
}
_FILES_UP = (  # edge_files_up_<field>: help (counters)
    ("queued", "Files taken from the outbox for upload"),
    ("sent", "Uploads whose every chunk the cloud broker acknowledged"),
    ("stored", "Uploads the receiver stored whole (receipt stored)"),
    ("failed", "Uploads given up (max attempts, refused by the receiver, the file changed)"),
    ("expired", "Sent uploads set aside after files.keep_sent_s without a receipt"),
    ("chunks_sent", "Chunks published the first time"),
    ("chunks_resent", "Chunks published again (reconnect, restart, receiver asked)"),
    ("manifests_sent", "Manifests published"),
    ("bytes", "Chunk data bytes published on the bulk lane"),
    ("receipts", "Receipts from the receiver taken in"),
    ("chunks_read_ahead", "Chunks read and hashed ahead in a worker thread, ready when wanted"),
    ("not_taken", "Outbox files left for the next scan (unreadable, the upload state not writable)"),
    ("scan_errors", "Unexpected errors of the outbox loop (a bug: see the log)"),
)


@dataclass(frozen=True)
class Spec:
    kind: Literal["counter", "gauge", "reasons"]  # "reasons": a counter by the label "reason"
    name: str
    help: str
    value: float | Mapping[str, int]


def file_specs(s: Snapshot) -> Iterator[Spec]:
    if s.files_up is not None:
        yield from _files_up(s.files_up)
    yield from _device_files(s.device_files)
    yield from _downloads(s.downloads)


def _files_up(f: FilesUpBlock) -> Iterator[Spec]:
    for name, help_text in _FILES_UP:
        yield Spec("counter", f"edge_files_up_{name}", help_text, getattr(f, name))
    yield Spec("gauge", "edge_files_up_transfers", "Uploads under way (in sending/)", f.transfers)
    yield Spec("gauge", "edge_files_up_sending_bytes", "Bytes of the uploads under way", f.sending_bytes)
    yield Spec("gauge", "edge_files_up_waiting_for_space", "Outbox files waiting for disk budget", f.waiting_for_space)
    yield Spec("reasons", "edge_files_up_rejected", "Outbox files refused, by reason", f.rejected)
    yield Spec("reasons", "edge_files_up_receipts_rejected", "Receipts refused, by reason", f.receipts_rejected)


def _device_files(d: DeviceFilesBlock) -> Iterator[Spec]:
    yield Spec("counter", "edge_device_files_received", "Files devices sent, verified whole and handed on", d.files)
    yield Spec("counter", "edge_device_file_chunks_received", "Chunks of device files written (repeats not counted)",
               d.chunks)
    yield Spec("counter", "edge_device_file_bytes_received", "Bytes of device file chunks written", d.bytes)
    yield Spec("reasons", "edge_device_file_rejections", "Device file messages and uploads refused, by reason",
               d.rejected)
    yield Spec("gauge", "edge_device_file_uploads", "Device file uploads under way", d.under_way)


def _downloads(d: DownloadsBlock) -> Iterator[Spec]:
    p = "edge_files_download"
    yield Spec("counter", f"{p}_received", "Downloads verified and installed into the inbox", d.received)
    yield Spec("counter", f"{p}_received_again", "Manifests of downloads already installed (answered again)",
               d.received_again)
    yield Spec("reasons", f"{p}_failed", "Downloads refused or given up, by reason", d.failed)
    yield Spec("reasons", f"{p}_rejected", "Download manifests and chunks refused, by reason", d.rejected)
    yield Spec("counter", f"{p}_chunks", "Download chunks written to disk", d.chunks)
    yield Spec("counter", f"{p}_duplicate_chunks", "Download chunks that were already on disk", d.duplicates)
    yield Spec("counter", f"{p}_bytes", "Download bytes written to disk", d.bytes)
    yield Spec("counter", f"{p}_missing_requests", "'missing' statuses sent (progress, resume and re-requests)",
               d.missing_sent)
    yield Spec("counter", f"{p}_unanswered", "Refusals and unknown-file chunks not answered (rate limit)",
               d.unanswered)
    yield Spec("gauge", f"{p}_in_progress", "Downloads under way", d.in_progress)
    yield Spec("gauge", f"{p}_disk_bytes", "Bytes reserved by the downloads under way", d.bytes_in_use)
