"""The upload side of file transfer, put together: ``uploads.db``, the uploader (the forwarder's bulk
source), the outbox scanner and the receipt handler, sharing one set of counters. Built by
:mod:`gateway.assemble`; :meth:`Uploads.open` / :meth:`Uploads.run` / :meth:`Uploads.close` by the
service. A whole file from another part of the gateway (a device upload) is handed over with
``uploads.outbox.take(path, name, content_type, meta, device)``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from bridge.protocol.file_topics import FileTopics
from bridge.protocol.records import FileStatus
from gateway.config import GatewayConfig
from gateway.files.counters import UploadCounters
from gateway.files.outbox import Outbox, set_aside
from gateway.files.receipts import ReceiptHandler
from gateway.files.uploader import Uploader
from gateway.files.uploads_db import UploadsDb

UPLOADS_DB = "uploads.db"
SENDING = "sending"


def uploads_db_path(cfg: GatewayConfig) -> Path:
    return cfg.files_dir / UPLOADS_DB


class Uploads:
    def __init__(self, cfg: GatewayConfig, topics: FileTopics, *, on_status: Callable[[FileStatus], None],
                 wake: Callable[[], None], other_bytes: Callable[[], int] = lambda: 0) -> None:
        self.counters = UploadCounters()
        self.db = UploadsDb(uploads_db_path(cfg))
        outbox_dir, keep = cfg.outbox_dir, cfg.files.rejected_keep

        def gone(path: Path, name: str, reason: str) -> None:
            set_aside(path, outbox_dir, name, f"failed: {reason}", keep)

        self.uploader = Uploader(self.db, cfg.files_dir / SENDING, topics, self.counters,
                                 max_attempts=cfg.files.max_attempts, keep_sent_s=cfg.files.keep_sent_s,
                                 on_status=on_status, wake=wake, on_gone=gone)
        self.outbox = Outbox(outbox_dir, cfg.files, self.uploader, self.counters, other_bytes)
        self.receipts = ReceiptHandler(topics, self.uploader)
        self.loop: asyncio.AbstractEventLoop | None = None  # while run() runs

    def open(self) -> None:
        """Open the state, take up the transfers under way, put back orphans (raises FilesError)."""
        self.db.open()
        self.uploader.start()
        self.outbox.recover()

    async def run(self, stop: asyncio.Event) -> None:
        self.loop = asyncio.get_running_loop()  # device uploads are handed over from a worker thread
        try:
            await self.outbox.run(stop, self.uploader.tick)
        finally:
            self.loop = None

    def close(self) -> None:
        self.uploader.save()
        self.uploader.prefetch.close()
        self.db.close()
