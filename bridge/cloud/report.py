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

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from bridge.cloud.sink_port import open_sink_store
from bridge.cloud.sink_queries import GapSummary

__all__ = ["MAX_GAP_RANGES", "build_report", "has_gaps", "render_report"]

MAX_GAP_RANGES = 20
_LANES = ("telemetry", "control")
_FILE_STATES = ("stored", "under_way", "failed")


def _gap_dict(gap: GapSummary | None) -> dict[str, Any]:
    if gap is None:
        return {"ranges": 0, "missing": 0, "first": [], "first_streams": []}
    return {"ranges": gap.ranges, "missing": gap.missing, "first": [[lo, hi] for lo, hi in gap.first],
            "first_streams": list(gap.first_streams)}


def build_report(db_path: Path | str, device: str | None = None, *,
                 password_file: Path | None = None) -> dict[str, Any]:
    """Summarise a sink database (a SQLite path or a PostgreSQL URL). With ``device``, only the
    gateways that device's data came through and only that device's row. Raises
    :class:`FileNotFoundError` if a SQLite file does not exist."""
    with open_sink_store(db_path, readonly=True, password_file=password_file) as store:
        lanes = store.lane_stats()
        dups = store.duplicate_counts()
        gaps = store.gaps(MAX_GAP_RANGES)
        invalid = store.invalid_counts()
        devices = store.device_stats()
        statuses = store.statuses()
        streams = store.streams()
        names = store.gateways()
        files = [f for f in store.files() if device in (None, f["device"])]
    gateways: dict[str, Any] = {}
    for gw in names:
        tel = lanes.get((gw, "telemetry"))
        ctl = lanes.get((gw, "control"))
        status = statuses.get(gw)
        received = [s.last_received_ms for s in (tel, ctl) if s is not None]
        devs = {dev: vars(stats).copy() for (g, dev), stats in devices.items()
                if g == gw and device in (None, dev)}
        if device is not None and not devs:
            continue
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
        "files": {state: sum(f["state"] == state for f in files) for state in _FILE_STATES},
    }
    return {"db": str(db_path), "device": device, "generated_ms": int(time.time() * 1000), "totals": totals,
            "gateways": gateways, "files": files}


def has_gaps(report: dict[str, Any]) -> bool:
    """True when any reported gateway misses seqs on any lane."""
    return any(report["totals"]["missing"].values())


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _ranges(first: list[list[int]]) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in first)


def _stream_missing(st: dict[str, Any]) -> str:
    missing = [f"{st[f'missing_{lane}']} {lane}" for lane in ("telemetry", "control") if st[f"missing_{lane}"]]
    return f", missing {' and '.join(missing)}" if missing else ""


def render_report(report: dict[str, Any], console: Console) -> None:
    """Print a report from :func:`build_report`: a few lines per gateway, the missing seqs, then one
    devices table per gateway. Fits 80 columns (terminal or pipe): long ids wrap, never cut."""
    gateways: dict[str, Any] = report["gateways"]
    if not gateways and not report["files"]:
        what = f"no data for device {report['device']}" if report.get("device") else "no data yet"
        console.print(Text(f"{report['db']}: {what}", style="yellow"))
        return
    console.print(Text(f"Sink report: {report['db']}", style="bold"))
    for gw, x in gateways.items():
        _render_gateway(gw, x, console)
        _render_devices(gw, x["devices"], console)
    _render_files(report["files"], console)


def _render_gateway(gw: str, x: dict[str, Any], console: Console) -> None:
    status = x["status"]
    state = "-" if status is None else status["state"]
    head = Text.assemble(("\n" + gw, "bold"), "  ", (state, "green" if state == "online" else "yellow"),
                         f"  last received {_when(x['last_received_ms'])} UTC")
    console.print(head)
    missing = {lane: g["missing"] for lane, g in x["gaps"].items()}
    console.print(Text.assemble(
        f"  batches {x['batches']} ({x['replayed_batches']} replayed), readings {x['readings']}, "
        f"duplicates dropped {sum(x['duplicates'].values())}\n",
        "  missing seqs: ",
        (f"telemetry {missing['telemetry']}, control {missing['control']}",
         "red" if any(missing.values()) else "green"),
        f"\n  alerts raised/cleared {x['alerts']['raised']}/{x['alerts']['cleared']}, events {x['events']}, "
        f"responses {x['responses']}, invalid {sum(x['invalid'].values())}"))
    for lane, gap in x["gaps"].items():
        if gap["ranges"]:
            rest = gap["ranges"] - len(gap["first"])
            for stream in dict.fromkeys(gap["first_streams"]):
                shown = [r for r, s in zip(gap["first"], gap["first_streams"], strict=True) if s == stream]
                label = f" stream {stream or '(none, v1)'}" if len(x["streams"]) > 1 else ""
                console.print(Text(f"  {gw} {lane}{label}: missing seqs {_ranges(shown)}", style="red"))
            if rest > 0:
                console.print(Text(f"  {gw} {lane}: (+{rest} more ranges)", style="red"))
    if len(x["streams"]) > 1:
        console.print(Text(f"  {gw} streams: " + ", ".join(
            f"{st['stream'] or '(none, v1)'} ({st['batches']} batches, from {_when(st['first_received_ms'])}"
            f"{_stream_missing(st)})"
            for st in x["streams"])))
    if x["invalid"]:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in x["invalid"].items())
        console.print(Text(f"  {gw} invalid messages: {reasons}", style="yellow"))


_DEVICE_COLUMNS = ("Device", "Readings", "Metrics", "First (UTC)", "Last (UTC)", "Alerts r/c", "Events", "Resp.")


def _device_table(title: str, devs: dict[str, Any], columns: tuple[str, ...]) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in columns:
        table.add_column(name, justify="left" if name == "Device" else "right", no_wrap=True)
    for dev, d in devs.items():
        cells: dict[str, str | Text] = {
            "Device": Text(dev), "Readings": str(d["readings"]), "Metrics": str(d["metrics"]),
            "First (UTC)": _when(d["first_ts_ms"]), "Last (UTC)": _when(d["last_ts_ms"]),
            "Alerts r/c": f"{d['alerts_raised']}/{d['alerts_cleared']}", "Events": str(d["events"]),
            "Resp.": str(d["responses"])}
        table.add_row(*(cells[c] for c in columns))
    return table


def _render_devices(gw: str, devs: dict[str, Any], console: Console) -> None:
    """The full table when it fits the console whole, else the table without the first-reading
    and metrics columns, else a compact list (each id on its own line): ids are never cut."""
    if not devs:
        return
    title = f"Devices behind {gw}"
    wide = console.options.update_width(10_000)
    for columns in (_DEVICE_COLUMNS, tuple(c for c in _DEVICE_COLUMNS if c not in ("Metrics", "First (UTC)"))):
        table = _device_table(title, devs, columns)
        if Measurement.get(console, wide, table).maximum <= console.width:
            console.print(table)
            return
    console.print(Text(title, style="italic"))
    for dev, d in devs.items():
        console.print(Text(f"  {dev}", style="bold"))
        console.print(Text(f"    readings {d['readings']} ({d['metrics']} metrics), alerts raised/cleared "
                           f"{d['alerts_raised']}/{d['alerts_cleared']}, events {d['events']}, "
                           f"responses {d['responses']}\n"
                           f"    first {_when(d['first_ts_ms'])}, last {_when(d['last_ts_ms'])} UTC"))


def _render_files(files: list[dict[str, Any]], console: Console) -> None:
    """One entry per upload received with ``--files-dir``: where it stands and where it is (ids and
    names are printed whole, each transfer on two lines, so nothing is cut at 80 columns)."""
    if not files:
        return
    console.print(Text(f"\nFiles ({len(files)})", style="bold"))
    colours = {"stored": "green", "under_way": "yellow", "failed": "red"}
    for f in files:
        progress = "" if f["state"] == "stored" else f" {f['received_chunks']}/{f['chunks']} chunks"
        why = f" ({f['reason']})" if f["reason"] else ""
        console.print(Text.assemble("  ", (f["state"], colours.get(f["state"], "")), f"{why}{progress}  ",
                                    (f["gateway"], "bold"), f"  {f['name']!r}  {f['size']} bytes"))
        console.print(Text(f"    id {f['id']}  sha256 {f['sha256'] or '-'}"
                           + (f"\n    path {f['path']}" if f["path"] else "")
                           + (f"  duplicate chunks {f['duplicates']}" if f["duplicates"] else "")))
