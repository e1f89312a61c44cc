"""Receipts from the upload's receiver (``{prefix}/files/up/{id}/receipt``, JSON, see
:func:`bridge.protocol.files.decode_receipt`): ``missing`` queues chunks (and the manifest) again,
``stored`` ends the transfer (the file is deleted; not when the receipt names another SHA-256:
that is counted as ``hash_mismatch`` and the file kept), ``failed`` ends it with the receiver's reason.
A bad receipt, or one for a file this gateway never sent, is counted as a rejection by reason; a
receipt for a transfer already over (a repeated ``stored``) is counted in ``receipts_late``."""

from __future__ import annotations

import logging

from bridge.mqtt.types import Message
from bridge.protocol.file_topics import FileTopics
from bridge.protocol.files import MALFORMED, UNKNOWN_FILE, FileRejected, decode_receipt
from gateway.files.uploader import Uploader
from gateway.files.uploads_db import FilesError

log = logging.getLogger(__name__)


class ReceiptHandler:
    """The downlink router's ``on_file_receipt``."""

    def __init__(self, topics: FileTopics, uploader: Uploader) -> None:
        self._topics = topics
        self._uploader = uploader
        self.late = 0

    def __call__(self, msg: Message) -> None:
        counters = self._uploader.counters
        counters.receipts += 1
        try:
            self._handle(msg)
        except FileRejected as exc:
            counters.receipts_rejected[exc.reason] += 1
            log.warning("receipt on %s refused: %s", msg.topic, exc)

    def _handle(self, msg: Message) -> None:
        parsed = self._topics.parse(msg.topic)
        receipt = decode_receipt(msg.payload)
        if parsed is None or parsed[1] != receipt.id:
            raise FileRejected(MALFORMED, f"receipt for {receipt.id} on {msg.topic}")
        up = self._uploader
        if receipt.state == "missing":
            known = up.resend(receipt.id, receipt.missing, receipt.manifest)
        else:
            known = up.finish(receipt.id, receipt.state, receipt.reason, receipt.sha256)
        if known:
            return
        try:
            over = up.db.finished(receipt.id)
        except FilesError as exc:
            log.warning("cannot look up receipt %s: %s", receipt.id, exc)
            return
        if over is None:
            raise FileRejected(UNKNOWN_FILE, f"receipt for {receipt.id}, a file this gateway does not know")
        self.late += 1
