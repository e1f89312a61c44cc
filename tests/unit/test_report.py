"""The sink report, built from a store filled here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from bridge.cloud.report import build_report, render_report
from bridge.cloud.sink_port import open_sink_store
from bridge.cloud.sink_store import SinkStore
from bridge.protocol.codec import Batch
from bridge.protocol.model import Reading
from tests.unit.test_sink_store import alert, event, response

T0 = 1_700_000_000_000


def batch(gateway: str, seq: int, devices: tuple[str, ...] = ("dev-1",), *, replay: bool = False) -> Batch:
    readings = [Reading(d, m, T0 + seq, 1.0) for d in devices for m in ("temp", "hum")]
    return Batch(gateway, seq, T0, readings, replay=replay)


@pytest.fixture
def db(sink_db: str | Path) -> str | Path:
    """A store filled with gaps, duplicates, control records and statuses, once per backend."""
    path = sink_db
    with open_sink_store(path, durable=False) as s:
        for seq in (1, 2, 3, 6, 7, 10):  # missing 4-5 and 8-9
            s.store_batch(batch("gw-1", seq, ("dev-1", "dev-2")), T0 + 100 * seq)
        s.store_batch(batch("gw-1", 2), T0)  # duplicate
        s.store_batch(batch("gw-1", 8, ("dev-1", "dev-2"), replay=True), T0 + 2000)  # fills 8
        s.store_control(alert(1), T0)
        s.store_control(alert(2, state="cleared"), T0)
        s.store_control(alert(3), T0)
        s.store_control(event(5), T0)  # control seq 4 missing
        s.store_control(response(6), T0)
        s.store_control(response(6), T0)  # duplicate
        s.record_status("gw-1", "online", T0)
        s.record_invalid("gw-1", "bad zlib body")
        s.store_batch(batch("gw-2", 0), T0)
        s.record_status("gw-3", "offline", T0)  # heard of, never sent data
    return path


def test_build_report_per_gateway(db: str | Path) -> None:
    report = build_report(db)
    assert set(report["gateways"]) == {"gw-1", "gw-2", "gw-3"}
    gw1 = report["gateways"]["gw-1"]
    assert gw1["batches"] == 7
    assert gw1["readings"] == 7 * 4
    assert gw1["replayed_batches"] == 1
    assert gw1["control_records"] == 5
    assert gw1["duplicates"] == {"telemetry": 1, "control": 1}
    assert gw1["gaps"]["telemetry"] == {"ranges": 2, "missing": 3, "first": [[4, 5], [9, 9]],
                                        "first_streams": ["", ""]}
    assert gw1["gaps"]["control"] == {"ranges": 1, "missing": 1, "first": [[4, 4]], "first_streams": [""]}
    assert [(s["stream"], s["batches"], s["control_records"]) for s in gw1["streams"]] == [("", 7, 5)]
    assert gw1["alerts"] == {"raised": 2, "cleared": 1}
    assert (gw1["events"], gw1["responses"]) == (1, 1)
    assert gw1["invalid"] == {"bad zlib body": 1}
    assert gw1["status"]["state"] == "online"
    assert gw1["last_received_ms"] == T0 + 2000
    dev1 = gw1["devices"]["dev-1"]
    assert dev1["readings"] == 14
    assert dev1["metrics"] == 2
    assert (dev1["alerts_raised"], dev1["alerts_cleared"]) == (2, 1)
    assert (dev1["first_ts_ms"], dev1["last_ts_ms"]) == (T0 + 1, T0 + 10)
    dev2 = gw1["devices"]["dev-2"]
    assert (dev2["readings"], dev2["events"], dev2["responses"]) == (14, 1, 1)
    gw3 = report["gateways"]["gw-3"]
    assert (gw3["batches"], gw3["status"]["state"], gw3["devices"]) == (0, "offline", {})
    totals = report["totals"]
    assert totals["readings"] == 28 + 2
    assert totals["missing"] == {"telemetry": 3, "control": 1}
    assert totals["duplicates"] == 2


def test_report_is_json(db: str | Path) -> None:
    report = build_report(db)
    assert json.loads(json.dumps(report)) == report


def test_render_report(db: str | Path) -> None:
    console = Console(record=True, width=220)
    render_report(build_report(db), console)
    text = console.export_text()
    assert "gw-1 telemetry: missing seqs 4-5, 9" in text
    assert "gw-1 control: missing seqs 4" in text
    assert "bad zlib body: 1" in text
    for word in ("gw-2", "gw-3", "dev-2", "online", "offline"):
        assert word in text


def test_render_many_gaps_shows_first_twenty(sink_db: str | Path) -> None:
    path = sink_db
    with open_sink_store(path, durable=False) as s:
        for seq in range(0, 60, 2):
            s.store_batch(batch("gw-1", seq), 0)
    report = build_report(path)
    assert len(report["gateways"]["gw-1"]["gaps"]["telemetry"]["first"]) == 20
    console = Console(record=True, width=400)
    render_report(report, console)
    assert "(+9 more ranges)" in console.export_text()


def test_empty_and_missing_database(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    SinkStore(path).close()
    report = build_report(path)
    assert report["gateways"] == {}
    console = Console(record=True, width=400)
    render_report(report, console)
    assert "no data yet" in console.export_text()
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path / "nope.sqlite")
