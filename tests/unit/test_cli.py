from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from gateway.cli import main

REFERENCE = Path(__file__).resolve().parents[2] / "conf" / "gateway.toml"


def test_check_reference_config_passes() -> None:
    res = CliRunner().invoke(main, ["check", "-c", str(REFERENCE)], env={"EDGE_UPLINK_PASSWORD": "x"})
    assert res.exit_code == 0, res.output
    assert '"id": "gw-01"' in res.output
    assert "EDGE_UPLINK_PASSWORD" in res.output and '"x"' not in res.output


def test_check_broken_config_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[batch]\nmax_age_s = -1\n[[rules]]\nmetrcs = 'x'\n")
    res = CliRunner().invoke(main, ["check", "-c", str(bad)])
    assert res.exit_code == 2
    assert str(bad) in res.output
    assert "batch.max_age_s" in res.output and "rules[0].metrcs" in res.output


def test_check_missing_secret_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[uplink.password]\nenv = 'EDGE_TEST_UNSET_VAR'\n")
    res = CliRunner().invoke(main, ["check", "-c", str(cfg)], env={"EDGE_TEST_UNSET_VAR": None})
    assert res.exit_code == 2 and "uplink.password" in res.output


def test_run_with_bad_config_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[gateway]\nid = ''\n")
    res = CliRunner().invoke(main, ["run", "-c", str(cfg)])
    assert res.exit_code == 2 and "gateway.id" in res.output


def test_unknown_option_is_usage_error() -> None:
    assert CliRunner().invoke(main, ["run", "--nope"]).exit_code == 2


def test_installed_script_and_module_entry_points() -> None:
    res = subprocess.run([sys.executable, "-m", "gateway", "--help"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "lab" in res.stdout and "sink" in res.stdout
    script = Path(sys.executable).parent / "edge-gateway"
    res = subprocess.run([str(script), "check", "-q", "-c", str(REFERENCE)], capture_output=True, text=True,
                         env={"EDGE_UPLINK_PASSWORD": "x", "PATH": "/usr/bin:/bin"}, check=False)
    assert res.returncode == 0, res.stderr
