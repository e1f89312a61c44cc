"""What the downloads count (:class:`DownloadCounters`), every reason a counter may carry, and the
rate limit on the answers nobody asked for (:class:`UnsolicitedAnswers`)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.protocol.files import CHUNK_HEADER, CHUNK_MAGIC, REJECT_REASONS
from bridge.uplink.pacing import TokenBucket

BUSY = "busy"  # a message dropped because the queue was full
IO_ERROR = "io_error"  # the disk refused (the transfer fails; see the log)
EXPIRED = "expired"  # no chunk for files.download_timeout_s: the transfer is dropped
DOWNLOAD_REASONS = (*REJECT_REASONS, BUSY, IO_ERROR, EXPIRED)  # every reason a download counter may carry
UNSOLICITED_PER_S = 1.0  # answers to messages of no transfer under way (refused manifests, unknown files)...
UNSOLICITED_BURST = 10  # ...at most this many at once, then this rate; the rest are counted, not answered
_ID_OFFSET = 8  # magic(4) version(1) flags(1) reserved(2): the raw id follows


@dataclass
class DownloadCounters:
    received: int = 0  # files installed
    received_again: int = 0  # manifests of files already installed, answered `received` again
    failed: Counter[str] = field(default_factory=Counter)  # transfers refused or given up, by reason
    rejected: Counter[str] = field(default_factory=Counter)  # manifests and chunks refused, by reason
    chunks: int = 0  # chunks written
    duplicates: int = 0  # chunks already on disk (or of a file already installed)
    bytes: int = 0  # chunk data written
    missing_sent: int = 0  # `missing` statuses written
    unanswered: int = 0  # refusals and unknown-file chunks not answered (UnsolicitedAnswers)


class UnsolicitedAnswers:
    """A token bucket for the statuses that answer a message of no transfer under way: each is a
    durable control record, and random ids from the cloud must not make one each."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._bucket = TokenBucket(UNSOLICITED_PER_S, UNSOLICITED_BURST, clock)

    def allow(self) -> bool:
        if self._bucket.wait_s() > 0:
            return False
        self._bucket.spend(1)
        return True


def chunk_index(payload: bytes, file_id: str) -> int | None:
    """The index a refused chunk claims, when its header is readable and names ``file_id``."""
    if len(payload) < CHUNK_HEADER.size or payload[:4] != CHUNK_MAGIC:
        return None
    if payload[_ID_OFFSET:_ID_OFFSET + 16].hex() != file_id:
        return None
    index: int = CHUNK_HEADER.unpack_from(payload)[5]
    return index
