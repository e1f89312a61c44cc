"""A gateway's timeline as plain series, for :mod:`bridge.cloud.plot`: built from a sink database
(what reached the cloud) or from snapshots sampled while a gateway runs (the lab).

Series are per bucket: ``readings_in`` and ``delivered`` in readings per second, ``backlog`` in
readings, ``link_up`` True/False (None where unknown); ``outages`` are ``(start, end)`` epoch seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from pathlib import Path

from bridge.cloud.sink_port import open_sink_store

__all__ = ["Sample", "Timeline", "from_samples", "from_sink"]

TARGET_BUCKETS = 300
_NICE_BUCKETS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


@dataclass
class Timeline:
    title: str
    t: list[float] = field(default_factory=list)  # epoch seconds, start of each bucket
    readings_in: list[float] = field(default_factory=list)
    delivered: list[float] = field(default_factory=list)
    backlog: list[float] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)
    in_label: str = "readings in"
    outage_label: str = "link down"
    backlog_label: str = "not yet delivered (readings)"


@dataclass(frozen=True)
class Sample:
    """One look at a running gateway: counters since start, backlog now, link state now."""

    t: float
    readings_in: int
    delivered: int
    backlog: int
    link_up: bool


def _spans(flags: Sequence[bool], t: Sequence[float], step: float) -> list[tuple[float, float]]:
    """Runs of True in ``flags`` as ``(start, end)`` times."""
    out: list[tuple[float, float]] = []
    start: float | None = None
    for flag, at in zip(flags, t, strict=True):
        if flag and start is None:
            start = at
        elif not flag and start is not None:
            out.append((start, at))
            start = None
    if start is not None:
        out.append((start, t[-1] + step))
    return out


def from_samples(samples: Sequence[Sample], title: str) -> Timeline:
    """The lab's timeline: rates from consecutive samples, link down shaded."""
    tl = Timeline(title)
    for prev, cur in pairwise(samples):
        dt = max(cur.t - prev.t, 1e-3)
        tl.t.append(cur.t)
        tl.readings_in.append((cur.readings_in - prev.readings_in) / dt)
        tl.delivered.append((cur.delivered - prev.delivered) / dt)
        tl.backlog.append(float(cur.backlog))
    if len(samples) < 2:
        return tl
    step = samples[-1].t - samples[-2].t
    tl.outages = _spans([not s.link_up for s in samples[1:]], tl.t, step)
    return tl


def from_sink(db_path: Path | str, device: str | None = None, *, password_file: Path | None = None) -> Timeline:
    """The sink's view: readings by when they were measured (in) and when they arrived (delivered);
    the backlog is what was measured but had not arrived yet; where replayed batches' readings were
    measured is shaded as an outage. Raises :class:`FileNotFoundError` if the database is missing."""
    title = f"{Path(db_path).name}: readings at the sink" + (f", device {device}" if device else "")
    with open_sink_store(db_path, readonly=True, password_file=password_file) as store:
        span = store.reading_span(device)
        if span is None:
            return Timeline(title, in_label="readings measured")
        lo, hi = span
        raw_s = (hi - lo + 1) / 1000 / TARGET_BUCKETS
        bucket_ms = 1000 * next((b for b in _NICE_BUCKETS_S if b >= raw_s), int(raw_s) + 1)
        rows = store.reading_buckets(bucket_ms, device)
    first, last = lo // bucket_ms, hi // bucket_ms
    n = last - first + 1
    measured, arrived, replayed = [0] * n, [0] * n, [False] * n
    for t_b, rx_b, replay, count in rows:
        measured[min(max(t_b - first, 0), n - 1)] += count
        arrived[min(max(rx_b - first, 0), n - 1)] += count
        if replay:
            replayed[min(max(t_b - first, 0), n - 1)] = True
    step = bucket_ms / 1000
    t = [(first + i) * step for i in range(n)]
    backlog = [max(m - a, 0) for m, a in zip(accumulate(measured), accumulate(arrived), strict=True)]
    return Timeline(title, t, [m / step for m in measured], [a / step for a in arrived], [float(b) for b in backlog],
                    _spans(replayed, t, step), in_label="readings measured", outage_label="outage (replayed later)",
                    backlog_label="measured, not yet at the sink (readings)")
