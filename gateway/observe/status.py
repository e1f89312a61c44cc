"""The local status file: written by the running gateway, read by ``edge-gateway status``.

The gateway builds the document on the event loop (the only thread that touches its state),
serialises it there, and hands only the bytes to a worker thread that writes them over the file
in place, padded with spaces to the file's length: the file is neither replaced nor truncated,
so rewriting it every few seconds dirties the same page-cache pages again and the kernel writes
them back about every 30 s, instead of a new file (and an immediate write-back, on ext4) each
time; that spares an SD card. A reader reads the file until two reads agree, so it never parses a
half-written document. The last write on the way out says ``"state": "stopped"``.

A file rather than an HTTP path: it needs no open port, no TLS or password, works whether or not
the metrics endpoint is enabled, and is guarded by the file system's own permissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError

if TYPE_CHECKING:  # rich is for the CLI only: the running gateway writes the file without it
    from rich.console import Console

log = logging.getLogger(__name__)

__all__ = ["StatusUnavailable", "read_status", "render_status", "write_in_place", "write_periodically"]

READ_ATTEMPTS = 50  # a reader racing the writer reads again until two reads agree
READ_RETRY_S = 0.005


class StatusUnavailable(GatewayError):
    """No readable status file (the gateway is not running with this config, or never was)."""


def write_in_place(path: Path, data: bytes) -> None:
    """Write ``data`` over the status file from its start, padded with spaces (JSON whitespace) to
    the file's length, so the file is never truncated or replaced; no fsync (a power cut loses only
    a status the next start rewrites). A new file gets mode 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            os.fchmod(fd, 0o644)  # whatever the umask
        os.pwrite(fd, data.ljust(size, b" "), 0)
    finally:
        os.close(fd)


def _read_settled(path: Path) -> bytes:
    """The file's bytes, read until two reads in a row agree (a write was not in progress)."""
    last = path.read_bytes()
    for _ in range(READ_ATTEMPTS):
        again = path.read_bytes()
        if again == last:
            return again
        last = again
        time.sleep(READ_RETRY_S)
    return last


async def write_periodically(path: Path, build: Callable[[], dict[str, Any]], interval_s: float,
                             stop: asyncio.Event) -> None:
    """Every ``interval_s`` until ``stop``, then once more with ``state = "stopped"``.
    A failed write is logged and retried at the next interval (the gateway keeps running)."""
    while True:
        stopping = stop.is_set()
        doc = {"ts": time.time(), "pid": os.getpid(), "interval_s": interval_s,
               "state": "stopped" if stopping else "running", **build()}
        data = json.dumps(doc, separators=(",", ":")).encode()
        try:
            await asyncio.to_thread(write_in_place, path, data)
        except OSError as exc:
            log.warning("cannot write the status file %s: %s", path, exc)
        if stopping:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


def read_status(path: Path) -> dict[str, Any]:
    """The status document, with ``age_s`` (seconds since it was written) and ``stale`` (True when
    the gateway missed more than two rewrites or has stopped) added."""
    try:
        doc = json.loads(_read_settled(path))
    except FileNotFoundError as exc:
        raise StatusUnavailable(f"no status file at {path}: is the gateway running with this config?") from exc
    except (OSError, ValueError) as exc:
        raise StatusUnavailable(f"cannot read the status file {path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("ts"), (int, float)):
        raise StatusUnavailable(f"{path} is not a gateway status file")
    age = max(0.0, time.time() - float(doc["ts"]))
    doc["age_s"] = round(age, 1)
    doc["stale"] = doc.get("state") != "running" or age > 2 * float(doc.get("interval_s", 5.0)) + 5
    return doc


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def render_status(doc: dict[str, Any], console: Console) -> None:
    """Print a status document from :func:`read_status`: a few lines and three small tables that
    fit 80 columns (long values wrap instead of being cut)."""
    from rich.table import Table
    from rich.text import Text

    state = "[red]stale[/]" if doc["stale"] else "[green]running[/]"
    if doc.get("state") == "stopped":
        state = "[yellow]stopped[/]"
    up = doc["uplink"]
    drain = up["drain"]
    link = "[green]connected[/]" if up["connected"] else "[red]down[/]"
    console.print(f"Gateway [bold]{doc['gateway']}[/] {state} (pid {doc['pid']}, written {_when(doc['ts'])} UTC, "
                  f"{doc['age_s']} s ago), config version {doc['config_version']}")
    console.print(f"Uplink {link} {up.get('endpoint') or ''}", highlight=False)
    if up.get("last_error"):
        console.print(f"  last error: {up['last_error']}", markup=False, highlight=False)
    console.print(f"Backlog {drain['backlog_readings']} readings, draining {drain['rate_readings_s']} readings/s, "
                  f"ETA {_duration(drain['eta_s'])}")
    lanes = Table(title="Lanes", title_justify="left")
    for name in ("Lane", "Records", "Bytes", "Readings"):
        lanes.add_column(name, justify="left" if name == "Lane" else "right")
    for lane, b in doc["buffer"].items():
        lanes.add_row(lane, str(b["records"]), str(b["bytes"]), str(b["readings"]))
    console.print(lanes)
    down = doc.get("downloads") or {}
    if down.get("in_progress") or down.get("received") or down.get("failed"):
        failed = ", ".join(f"{r} {n}" for r, n in sorted((down.get("failed") or {}).items())) or "none"
        console.print(f"Downloads: {down.get('in_progress', 0)} under way ({down.get('bytes_in_use', 0)} bytes "
                      f"reserved), {down.get('received', 0)} received, failed: {failed}", highlight=False)
    clients = doc.get("connected_devices")
    if clients is None:
        console.print("Connected devices: unknown (external broker)")
    else:
        names = [c["identity"] or c["client_id"] for c in clients]
        console.print(f"Connected devices ({len(names)}): " + (", ".join(names) or "none"), highlight=False,
                      markup=False)
    rejects = doc.get("last_rejects") or []
    counts = doc.get("rejects") or {}
    if counts:
        console.print("Rejected so far: " + ", ".join(f"{r} {n}" for r, n in sorted(counts.items())),
                      highlight=False)
    if rejects:
        console.print(f"Last {len(rejects)} rejected messages (newest first):")
        for r in reversed(rejects):
            console.print(Text.assemble(f"  {_when(r['at'])[11:]} ", (r["device"] or "-", "bold"), " ",
                                        (r["reason"], "red"), f"\n    {r['topic']}\n    {r['detail']}"))
