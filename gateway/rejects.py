"""Rejected input: counted by reason, the last few kept for inspection."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass


@dataclass(frozen=True)
class RejectedSample:
    at: float
    topic: str
    reason: str
    detail: str


class RejectLog:
    def __init__(self, keep_last: int = 20) -> None:
        self.counts: Counter[str] = Counter()
        self.last: deque[RejectedSample] = deque(maxlen=max(keep_last, 1))
        self._keep = keep_last > 0

    def add(self, topic: str, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        if self._keep:
            self.last.append(RejectedSample(time.time(), topic[:200], reason, detail))
