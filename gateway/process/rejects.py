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
    device: str | None = None  # the device id level of the topic, when the topic has one


class RejectLog:
    def __init__(self, keep_last: int = 20) -> None:
        self.counts: Counter[str] = Counter()
        self.last: deque[RejectedSample] = deque(maxlen=max(keep_last, 1))
        self._keep = keep_last > 0

    def add(self, topic: str, reason: str, detail: str, device: str | None = None) -> None:
        self.counts[reason] += 1
        if self._keep:
            self.last.append(RejectedSample(time.time(), topic[:200], reason, detail,
                                            None if device is None else device[:80]))

    def recent(self) -> list[dict[str, object]]:
        """The kept samples, oldest first, as JSON-ready dicts."""
        return [{"at": s.at, "device": s.device, "topic": s.topic, "reason": s.reason, "detail": s.detail}
                for s in self.last] if self._keep else []
