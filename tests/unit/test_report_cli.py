"""`edge-gateway report` as a script sees it: 80 columns, piped output, --device, --fail-on-gaps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from bridge.cloud.report import build_report, render_report
from bridge.cloud.sink_store import SinkStore
from gateway.cli import main
from tests.unit.test_report import T0, batch

LONG = "dev-" + "kitchen-north-wall-sensor-" * 2 + "0001"  # 60 characters: a valid id, longer than a cell


def report(db: Path, *args: str, columns: int = 80) -> Result:
    # CliRunner's output is not a terminal: this is what a pipe or a redirect gets
    return CliRunner().invoke(main, ["report", "--db", str(db), *args], env={"COLUMNS": str(columns)})


@pytest.fixture
def long_ids(tmp_path: Path) -> Path:
    path = tmp_path / "long.sqlite"
    with SinkStore(path, durable=False) as s:
        for seq in (1, 2, 4):  # 3 missing
            s.store_batch(batch("gateway-on-the-third-floor", seq, (LONG, "dev-2")), T0 + seq)
        s.store_batch(batch("gw-b", 0, ("dev-3",)), T0)
        s.record_status("gateway-on-the-third-floor", "online", T0)
    return path


@pytest.fixture
def no_gaps(tmp_path: Path) -> Path:
    path = tmp_path / "whole.sqlite"
    with SinkStore(path, durable=False) as s:
        for seq in range(3):
            s.store_batch(batch("gw-b", seq, ("dev-3",)), T0 + seq)
    return path


def assert_fits_and_whole(text: str, width: int) -> None:
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, text
    assert "…" not in text
    flat = "".join(text.split())
    for name in (LONG, "gateway-on-the-third-floor", "dev-2", "dev-3", "gw-b"):
        assert name in flat, f"{name} cut:\n{text}"


def test_piped_report_fits_80_columns_and_never_cuts_ids(long_ids: Path) -> None:
    result = report(long_ids)
    assert result.exit_code == 0, result.output
    assert_fits_and_whole(result.output, 80)
    assert "gateway-on-the-third-floor telemetry: missing seqs 3" in result.output
    assert "Devices behind gw-b" in result.output


def test_short_ids_get_a_table_at_80_columns(no_gaps: Path) -> None:
    out = report(no_gaps).output
    assert max(len(line) for line in out.splitlines()) <= 80
    header = next(line for line in out.splitlines() if line.split()[:1] == ["Device"])
    assert header.split() == ["Device", "Readings", "Last", "(UTC)", "Alerts", "r/c", "Events", "Resp."]
    wide = report(no_gaps, columns=140).output
    assert "First (UTC)" in wide and "Metrics" in wide


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(min_value=80, max_value=200), terminal=st.booleans())
def test_report_fits_any_width_from_80(long_ids: Path, width: int, terminal: bool) -> None:
    console = Console(width=width, record=True, force_terminal=terminal, file=open("/dev/null", "w"))  # noqa: SIM115
    render_report(build_report(long_ids), console)
    console.file.close()
    assert_fits_and_whole(console.export_text(), width)


def test_fail_on_gaps_exit_codes(long_ids: Path, no_gaps: Path) -> None:
    assert report(long_ids).exit_code == 0  # without the flag gaps are reported, not failed on
    failed = report(long_ids, "--fail-on-gaps")
    assert failed.exit_code == 1
    assert "1 telemetry and 0 control records missing" in failed.output
    assert report(no_gaps, "--fail-on-gaps").exit_code == 0
    as_json = report(long_ids, "--fail-on-gaps", "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.output[:as_json.output.rindex("}") + 1])["totals"]["missing"]["telemetry"] == 1


def test_device_filter(long_ids: Path) -> None:
    data = build_report(long_ids, "dev-3")
    assert list(data["gateways"]) == ["gw-b"]
    assert list(data["gateways"]["gw-b"]["devices"]) == ["dev-3"]
    out = report(long_ids, "--device", "dev-2").output
    assert "dev-2" in out and "dev-3" not in out and "gw-b" not in out
    # gw-b has no gap: filtered to dev-3, the script sees no gap
    assert report(long_ids, "--device", "dev-3", "--fail-on-gaps").exit_code == 0
    assert report(long_ids, "--device", "dev-2", "--fail-on-gaps").exit_code == 1
    none = report(long_ids, "--device", "nobody")
    assert none.exit_code == 0 and "no data for device nobody" in " ".join(none.output.split())
