"""Terminal output of ``device-sim run``: a live progress line (rich) and the final summary."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from device_sim.stats import Progress

REFRESH_S = 0.5


def _line(p: Progress) -> Text:
    text = Text()
    text.append(f"sent {p.sent:,}", style="bold green")
    text.append(f"  rate {p.rate:,.1f} msg/s")
    text.append(f"  failed {p.failed:,}", style="bold red" if p.failed else "")
    text.append(f"  reconnects {p.reconnects:,}", style="yellow" if p.reconnects else "")
    text.append(f"  connected {p.connected}/{p.connections}", style="" if p.connected == p.connections
                else "yellow")
    text.append(f"  {p.elapsed_s:,.0f} s", style="dim")
    return text


@contextlib.asynccontextmanager
async def live_progress(snapshot: Callable[[], Progress], enabled: bool) -> AsyncIterator[None]:
    """Show a refreshing progress line on stdout while the body runs (only when ``enabled``)."""
    if not enabled:
        yield
        return
    console = Console()
    with Live(Text("connecting..."), console=console, refresh_per_second=4, transient=True) as live:

        async def refresh() -> None:
            while True:
                await asyncio.sleep(REFRESH_S)
                with contextlib.suppress(RuntimeError):  # not started yet
                    live.update(_line(snapshot()))

        task = asyncio.get_running_loop().create_task(refresh())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def summary_text(s: dict[str, Any]) -> str:
    """The human-readable summary printed at the end of a run."""
    rate_note = "" if s["rate_met"] else "  (requested rate NOT met)"
    rows = [
        ("devices", f"{s['devices']} ({', '.join(s['profiles'])}, {s['format']}, QoS {s['qos']}"
                    f"{', shared connection' if s['shared_connection'] else ''})"),
        ("sent", f"{s['sent']} messages in {s['elapsed_s']:.1f} s"),
        ("failed", f"{s['failed']} (backlog overflow {s['overflow']})"),
        ("reconnects", str(s["reconnects"])),
        ("rate", f"{s['achieved_msg_per_s']:.1f} msg/s achieved, {s['requested_msg_per_s']:.1f} msg/s "
                 f"requested{rate_note}"),
        ("events", f"{s['events_sent']} sent"),
        ("commands", f"{s['commands_received']} received, {s['commands_answered']} answered "
                     f"({s['commands_malformed']} error, {s['commands_unknown']} unknown, "
                     f"{s['commands_expired']} expired)"),
    ]
    if s["control_failed"] or s["errors"]:
        rows.append(("problems", f"{s['control_failed']} events/responses not acknowledged, {s['errors']} errors"))
    lines = [f"{label:<11}{text}" for label, text in rows]
    return "\n".join(lines)
