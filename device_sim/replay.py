"""Replay recorded readings from a CSV file (columns ``device,metric,ts,value`` with a header row).

Rows are sorted by time (stable); consecutive rows of one device with the same ``ts`` become one
telemetry object. ``ts`` may be epoch seconds (with decimals) or epoch milliseconds. Values that are
not numbers are sent as they are (to replay bad input). Each device's ``seq`` starts at 1.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_sim import payloads, topics
from device_sim.anomalies import Value
from device_sim.errors import SimConfigError
from device_sim.payloads import Format
from device_sim.publisher import Publisher

COLUMNS = ("device", "metric", "ts", "value")
_MS_THRESHOLD = 100_000_000_000  # larger ts values are milliseconds (year 1973 in ms, 5138 in s)


@dataclass(frozen=True)
class Row:
    device: str
    metric: str
    ts_ms: int
    value: Value


@dataclass
class Group:
    device: str
    ts_ms: int
    values: dict[str, Value] = field(default_factory=dict)


def parse_value(text: str) -> Value:
    """``21`` → 21, ``21.5`` → 21.5, ``nan`` → NaN, anything else stays text."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_ts(text: str) -> int:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"bad timestamp {text!r}")
    return int(value) if value >= _MS_THRESHOLD else round(value * 1000)


def load_csv(path: Path) -> list[Row]:
    """Read and validate the file; raises :class:`SimConfigError` naming the bad line."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise SimConfigError(f"{path}: header row must name the columns {', '.join(COLUMNS)} "
                                     f"(missing: {', '.join(missing)})")
            return [_row(path, reader.line_num, raw) for raw in reader]
    except OSError as exc:
        raise SimConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SimConfigError(f"{path}: not a readable CSV file: {exc}") from exc


def _row(path: Path, line: int, raw: dict[str, str | None]) -> Row:
    device, metric = (raw.get("device") or "").strip(), (raw.get("metric") or "").strip()
    if not topics.is_valid_device_id(device):
        raise SimConfigError(f"{path}:{line}: bad device id {device!r}")
    if topics.METRIC_RE.fullmatch(metric) is None or metric in ("ts", "seq"):
        raise SimConfigError(f"{path}:{line}: bad metric name {metric!r}")
    try:
        ts_ms = parse_ts(raw.get("ts") or "")
    except ValueError as exc:
        raise SimConfigError(f"{path}:{line}: bad ts {raw.get('ts')!r} (epoch seconds or ms)") from exc
    return Row(device, metric, ts_ms, parse_value(raw.get("value") or ""))


def group_rows(rows: Iterable[Row]) -> list[Group]:
    groups: list[Group] = []
    for row in sorted(rows, key=lambda r: r.ts_ms):
        last = groups[-1] if groups else None
        if last is None or last.device != row.device or last.ts_ms != row.ts_ms or row.metric in last.values:
            last = Group(row.device, row.ts_ms)
            groups.append(last)
        last.values[row.metric] = row.value
    return groups


GATEWAY_WINDOW_S = 7 * 86400  # the gateway's default decode.max_past_s


def stale_warning(groups: list[Group], now_ms: int, restamp: bool) -> str | None:
    """A warning when the recorded timestamps are older than a default gateway accepts."""
    if restamp or not groups:
        return None
    age_s = (now_ms - min(g.ts_ms for g in groups)) / 1000
    if age_s <= GATEWAY_WINDOW_S:
        return None
    return (f"warning: the recorded timestamps are up to {age_s / 86400:.0f} days old; a gateway with the default "
            f"window (decode.max_past_s = 7 days) rejects them as ts_out_of_window although the broker "
            f"acknowledges them. --restamp sends them with the current time.")


@dataclass(frozen=True)
class ReplayOptions:
    fmt: Format = "json"
    qos: int = 1
    topic_template: str = topics.DEFAULT_TEMPLATE
    speed: float = 1.0
    fast: bool = False
    restamp: bool = False
    window: int = 100
    drain_timeout_s: float = 10.0


async def replay(groups: list[Group], publishers: Mapping[str, Publisher], opts: ReplayOptions) -> dict[str, Any]:
    """Publish the groups at the recorded pace (scaled by ``speed``) or as fast as possible, each
    device's over ``publishers[device]`` (one connection may serve several devices)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    t0 = groups[0].ts_ms if groups else 0
    seqs: dict[str, int] = {}
    sent: dict[str, int] = {}
    failed = messages = 0
    pending: set[asyncio.Future[bool]] = set()

    def done(fut: asyncio.Future[bool], device: str) -> None:
        nonlocal failed
        pending.discard(fut)
        if fut.result():
            sent[device] = sent.get(device, 0) + 1
        else:
            failed += 1

    for group in groups:
        if not opts.fast:
            delay = start + (group.ts_ms - t0) / 1000 / opts.speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        ts = int(time.time() * 1000) if opts.restamp else group.ts_ms
        publisher = publishers[group.device]
        for topic, payload in _messages(group, ts, seqs, opts):
            while len(pending) >= opts.window:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            fut = publisher.publish(topic, payload, opts.qos)
            while fut is None:  # QoS 0 while disconnected: wait for the reconnect, then send
                await publisher.wait_connected()
                fut = publisher.publish(topic, payload, opts.qos)
            messages += 1
            pending.add(fut)
            fut.add_done_callback(functools.partial(done, device=group.device))
    if pending:
        await asyncio.wait(pending, timeout=opts.drain_timeout_s)
    elapsed = loop.time() - start
    total = sum(sent.values())
    return {
        "readings": sum(len(g.values) for g in groups), "groups": len(groups), "messages": messages,
        "sent": total, "failed": failed + len(pending), "elapsed_s": round(elapsed, 3),
        "achieved_msg_per_s": round(total / elapsed, 3) if elapsed > 0 else 0.0,
        "reconnects": sum(p.reconnects for p in set(publishers.values())), "per_device": dict(sorted(sent.items())),
    }


def _messages(group: Group, ts: int, seqs: dict[str, int], opts: ReplayOptions) -> list[tuple[str, bytes]]:
    template, device = opts.topic_template, group.device
    if opts.fmt == "bare":
        return [(topics.telemetry_topic(template, device, m), payloads.bare(v)) for m, v in group.values.items()]
    if topics.has_metric(template):
        out = []
        for metric, value in group.values.items():
            seqs[device] = seqs.get(device, 0) + 1
            out.append((topics.telemetry_topic(template, device, metric),
                        payloads.telemetry(ts, seqs[device], {metric: value}, opts.fmt)))
        return out
    seqs[device] = seqs.get(device, 0) + 1
    return [(topics.telemetry_topic(template, device), payloads.telemetry(ts, seqs[device], group.values, opts.fmt))]
