"""Timeline PNGs: from a sink database (`report --plot`) and from sampled snapshots (the lab)."""

from __future__ import annotations

import builtins
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bridge.cloud.errors import PlotUnavailable
from bridge.cloud.plot import require_matplotlib, write_png
from bridge.cloud.sink_store import SinkStore
from bridge.cloud.timeline import Sample, from_samples, from_sink
from bridge.protocol.codec import Batch
from bridge.protocol.model import Reading
from gateway.cli import main

T0 = 1_700_000_000_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture
def outage_db(tmp_path: Path) -> Path:
    """One reading a second for 10 minutes; minutes 4-6 were measured during an outage and
    arrived replayed at minute 6."""
    path = tmp_path / "sink.sqlite"
    with SinkStore(path, durable=False) as s:
        for seq, start in enumerate(range(0, 600, 10)):
            ts = [T0 + (start + i) * 1000 for i in range(10)]
            down = 240 <= start < 360
            received = T0 + 360_000 + seq if down else ts[-1] + 200
            readings = [Reading("dev-1", "temp", t, 20.0) for t in ts]
            s.store_batch(Batch("gw-1", seq, ts[0], readings, replay=down), received)
    return path


def test_sink_timeline_shows_the_outage_and_its_backlog(outage_db: Path) -> None:
    tl = from_sink(outage_db)
    step = tl.t[1] - tl.t[0]
    assert step == 2  # 10 minutes in at most 300 buckets of a round size
    assert sum(r * step for r in tl.readings_in) == pytest.approx(600)  # in readings/s
    assert sum(d * step for d in tl.delivered) == pytest.approx(600)
    assert len(tl.outages) == 1
    lo, hi = tl.outages[0]
    assert abs(lo - (T0 / 1000 + 240)) <= step and abs(hi - (T0 / 1000 + 360)) <= step
    assert max(tl.backlog) >= 110  # two minutes measured and not yet delivered
    assert tl.backlog[-1] == 0
    assert from_sink(outage_db, "nobody").t == []


def test_report_plot_writes_a_png(outage_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots" / "timeline.png"
    result = CliRunner().invoke(main, ["report", "--db", str(outage_db), "--plot", str(out)])
    assert result.exit_code == 0, result.output
    assert f"timeline written to {out}" in " ".join(result.output.split())
    assert png_size(out) == (1000, 600)
    assert 20_000 < out.stat().st_size < 500_000


def test_lab_samples_make_a_timeline_png(tmp_path: Path) -> None:
    t0 = T0 / 1000
    samples = [Sample(t0 + i, 10 * i, 10 * i if not 5 <= i < 9 else 40, 0 if not 5 <= i < 9 else 10 * (i - 4),
                      not 5 <= i < 9) for i in range(15)]
    tl = from_samples(samples, "lab")
    assert tl.readings_in == [10.0] * 14
    assert tl.outages == [(t0 + 5, t0 + 9)]
    assert png_size(write_png(tl, tmp_path / "lab.png")) == (1000, 600)
    assert from_samples(samples[:1], "lab").t == []
    assert png_size(write_png(from_samples([], "empty"), tmp_path / "empty.png")) == (1000, 600)


def test_missing_matplotlib_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, outage_db: Path,
                                             tmp_path: Path) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".", maxsplit=1)[0] == "matplotlib":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m.split(".")[0] == "matplotlib"]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(PlotUnavailable, match=r"pip install 'edge-mqtt-gateway\[plot\]'"):
        require_matplotlib()
    out = tmp_path / "x.png"
    for args in (["report", "--db", str(outage_db), "--plot", str(out)],
                 ["lab", "--duration", "1", "--plot", str(out)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert "--plot: plotting needs matplotlib" in result.output
        assert "edge-mqtt-gateway[plot]" in result.output
        assert not out.exists()
