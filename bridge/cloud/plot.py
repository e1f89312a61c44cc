"""Draw a :class:`~bridge.cloud.timeline.Timeline` as a PNG: the only module that imports matplotlib.

matplotlib is the optional ``plot`` extra (``pip install 'edge-mqtt-gateway[plot]'``), imported
only when a plot is asked for, so a gateway install stays lean.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bridge.cloud.errors import PlotUnavailable
from bridge.cloud.timeline import Timeline

__all__ = ["INSTALL_HINT", "require_matplotlib", "write_png"]

INSTALL_HINT = "install the plot extra: pip install 'edge-mqtt-gateway[plot]'"


def require_matplotlib() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend; :class:`PlotUnavailable` when missing."""
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotUnavailable(f"plotting needs matplotlib, which is not installed: {INSTALL_HINT}") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_png(tl: Timeline, path: Path) -> Path:
    """Two panels sharing the time axis (rates on top, backlog below), outages shaded in both."""
    plt = require_matplotlib()
    import matplotlib.dates as mdates

    times = [datetime.fromtimestamp(t, tz=timezone.utc) for t in tl.t]
    fig, (rates, backlog) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), dpi=100,
                                         gridspec_kw={"height_ratios": [3, 2]})
    try:
        rates.plot(times, tl.readings_in, label=f"{tl.in_label} /s", color="tab:blue", linewidth=1.2)
        rates.plot(times, tl.delivered, label="delivered /s", color="tab:green", linewidth=1.2)
        backlog.fill_between(times, tl.backlog, step="post", color="tab:orange", alpha=0.6, label=tl.backlog_label)
        for ax in (rates, backlog):
            for i, (lo, hi) in enumerate(tl.outages):
                ax.axvspan(datetime.fromtimestamp(lo, tz=timezone.utc), datetime.fromtimestamp(hi, tz=timezone.utc),
                           color="tab:red", alpha=0.15, linewidth=0, label=tl.outage_label if i == 0 else None)
            ax.grid(True, alpha=0.3)
            ax.set_ylim(bottom=0)
            ax.legend(loc="upper left", fontsize="small")
        rates.set_ylabel("readings per second")
        backlog.set_ylabel("readings")
        backlog.set_xlabel("time (UTC)")
        backlog.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))  # type: ignore[no-untyped-call]
        rates.set_title(tl.title if tl.t else f"{tl.title}: no readings yet")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
