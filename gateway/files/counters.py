"""Counters of the file uploads (metrics ``edge_files_*``, the status file, the stats document)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class UploadCounters:
    files_queued: int = 0  # taken from the outbox into sending/
    files_sent: int = 0  # every chunk acknowledged by the cloud broker
    files_stored: int = 0  # the receiver's receipt "stored" arrived
    files_failed: int = 0  # gave up (too many attempts, the receiver refused it, the file changed)
    files_expired: int = 0  # sent, but no "stored" within files.keep_sent_s
    chunks_sent: int = 0  # first sends of a chunk
    chunks_resent: int = 0  # sends of a chunk sent before (reconnect, restart, receipt "missing")
    manifests_sent: int = 0
    chunks_read_ahead: int = 0  # chunks read and hashed in the worker thread before they were wanted
    bulk_bytes: int = 0  # chunk data published (payload bytes without headers)
    receipts: int = 0  # receipts taken in
    rejected: Counter[str] = field(default_factory=Counter)  # outbox files refused, by reason
    receipts_rejected: Counter[str] = field(default_factory=Counter)  # bad or unknown receipts, by reason
    not_taken: int = 0  # outbox files left for the next scan (unreadable, the state not writable)
    scan_errors: int = 0  # unexpected errors of the outbox loop (a bug: see the log)

    def document(self) -> dict[str, Any]:
        return {"files_queued": self.files_queued, "files_sent": self.files_sent, "files_stored": self.files_stored,
                "files_failed": self.files_failed, "files_expired": self.files_expired,
                "chunks_sent": self.chunks_sent, "chunks_resent": self.chunks_resent,
                "manifests_sent": self.manifests_sent,
                "chunks_read_ahead": self.chunks_read_ahead, "bulk_bytes": self.bulk_bytes, "receipts": self.receipts,
                "rejected": dict(self.rejected), "receipts_rejected": dict(self.receipts_rejected),
                "not_taken": self.not_taken, "scan_errors": self.scan_errors}
