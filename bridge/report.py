"""What a sink database holds, per gateway and device: the ``edge-gateway report`` command.

:func:`build_report` returns plain JSON-ready data (``--json`` prints ``json.dumps`` of it);
:func:`render_report` prints it as rich tables. Gaps are computed from the stored seqs, so a gap
filled later by a replayed batch no longer shows.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bridge.sink_store import GapSummary, SinkStore

__all__ = ["MAX_GAP_RANGES", "build_report", "render_report"]

MAX_GAP_RANGES = 20
_LANES = ("telemetry", "control")


def _gap_dict(gap: GapSummary | None) -> dict[str, Any]:
    if gap is None:
        return {"ranges": 0, "missing": 0, "first": [], "first_streams": []}
    return {"ranges": gap.ranges, "missing": gap.missing, "first": [[lo, hi] for lo, hi in gap.first],
            "first_streams": list(gap.first_streams)}


def build_report(db_path: Path | str) -> dict[str, Any]:
    """Summarise a sink database. Raises :class:`FileNotFoundError` if it does not exist."""
    with SinkStore.open_readonly(db_path) as store:
        lanes = store.lane_stats()
        dups = store.duplicate_counts()
        gaps = store.gaps(MAX_GAP_RANGES)
        invalid = store.invalid_counts()
        devices = store.device_stats()
        statuses = store.statuses()
        streams = store.streams()
        names = store.gateways()
    gateways: dict[str, Any] = {}
    for gw in names:
        tel = lanes.get((gw, "telemetry"))
        ctl = lanes.get((gw, "control"))
        status = statuses.get(gw)
        received = [s.last_received_ms for s in (tel, ctl) if s is not None]
        devs = {dev: vars(stats).copy() for (g, dev), stats in devices.items() if g == gw}
        gateways[gw] = {
            "status": None if status is None else vars(status).copy(),
            "last_received_ms": max(received) if received else None,
            "batches": tel.records if tel else 0,
            "readings": tel.readings if tel else 0,
            "replayed_batches": tel.replayed if tel else 0,
            "control_records": ctl.records if ctl else 0,
            "duplicates": {lane: dups.get((gw, lane), 0) for lane in _LANES},
            "gaps": {lane: _gap_dict(gaps.get((gw, lane))) for lane in _LANES},
            "invalid": invalid.get(gw, {}),
            "alerts": {
                "raised": sum(d["alerts_raised"] for d in devs.values()),
                "cleared": sum(d["alerts_cleared"] for d in devs.values()),
            },
            "events": sum(d["events"] for d in devs.values()),
            "responses": sum(d["responses"] for d in devs.values()),
            "devices": devs,
            "streams": [vars(st).copy() for st in streams.get(gw, [])],
        }
    g = gateways.values()
    totals = {
        "gateways": len(gateways),
        "batches": sum(x["batches"] for x in g),
        "readings": sum(x["readings"] for x in g),
        "replayed_batches": sum(x["replayed_batches"] for x in g),
        "alerts": sum(x["alerts"]["raised"] + x["alerts"]["cleared"] for x in g),
        "events": sum(x["events"] for x in g),
        "responses": sum(x["responses"] for x in g),
        "duplicates": sum(sum(x["duplicates"].values()) for x in g),
        "missing": {lane: sum(x["gaps"][lane]["missing"] for x in g) for lane in _LANES},
        "invalid": sum(sum(x["invalid"].values()) for x in g),
    }
    now_ms = int(time.time() * 1000)
    return {"db": str(db_path), "generated_ms": now_ms, "totals": totals, "gateways": gateways}


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _ranges(first: list[list[int]]) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in first)


def _gap_cell(gap: dict[str, Any]) -> str:
    if not gap["missing"]:
        return "0"
    return f"[red]{gap['missing']}[/] in {gap['ranges']}"


def render_report(report: dict[str, Any], console: Console) -> None:
    """Print a report from :func:`build_report` as tables: gateways, missing seqs, devices."""
    gateways: dict[str, Any] = report["gateways"]
    if not gateways:
        console.print(f"[yellow]{report['db']}: no data yet[/]")
        return
    summary = Table(title=f"Sink report: {report['db']}")
    for name in ("Gateway", "Status", "Last received (UTC)", "Batches", "Readings", "Replayed",
                 "Duplicates", "Missing batches", "Missing control", "Alerts r/c", "Events",
                 "Responses", "Invalid"):
        summary.add_column(name, justify="left" if name in ("Gateway", "Status") else "right")
    for gw, x in gateways.items():
        status = x["status"]
        state = "-" if status is None else status["state"]
        style = "green" if state == "online" else "yellow"
        summary.add_row(
            gw, f"[{style}]{state}[/]", _when(x["last_received_ms"]), str(x["batches"]), str(x["readings"]),
            str(x["replayed_batches"]), str(sum(x["duplicates"].values())),
            _gap_cell(x["gaps"]["telemetry"]), _gap_cell(x["gaps"]["control"]),
            f"{x['alerts']['raised']}/{x['alerts']['cleared']}", str(x["events"]), str(x["responses"]),
            str(sum(x["invalid"].values())),
        )
    console.print(summary)
    for gw, x in gateways.items():
        for lane, gap in x["gaps"].items():
            if gap["ranges"]:
                rest = gap["ranges"] - len(gap["first"])
                more = f" (+{rest} more ranges)" if rest > 0 else ""
                for stream in dict.fromkeys(gap["first_streams"]):
                    shown = [r for r, s in zip(gap["first"], gap["first_streams"], strict=True) if s == stream]
                    label = f" stream {stream or '(none, v1)'}" if len(x["streams"]) > 1 else ""
                    console.print(f"[red]{gw} {lane}{label}: missing seqs {_ranges(shown)}[/]")
                if more:
                    console.print(f"[red]{gw} {lane}:{more}[/]")
        if len(x["streams"]) > 1:
            console.print(f"{gw} streams: " + ", ".join(
                f"{st['stream'] or '(none, v1)'} ({st['batches']} batches, from {_when(st['first_received_ms'])})"
                for st in x["streams"]))
        if x["invalid"]:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in x["invalid"].items())
            console.print(f"[yellow]{gw} invalid messages: {reasons}[/]")
    devices = Table(title="Devices")
    for name in ("Gateway", "Device", "Readings", "Metrics", "First (UTC)", "Last (UTC)", "Alerts raised",
                 "Alerts cleared", "Events", "Responses"):
        devices.add_column(name, justify="left" if name in ("Gateway", "Device") else "right")
    for gw, x in gateways.items():
        for dev, d in x["devices"].items():
            devices.add_row(gw, dev, str(d["readings"]), str(d["metrics"]), _when(d["first_ts_ms"]),
                            _when(d["last_ts_ms"]), str(d["alerts_raised"]), str(d["alerts_cleared"]),
                            str(d["events"]), str(d["responses"]))
    if devices.row_count:
        console.print(devices)
