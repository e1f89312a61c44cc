from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import GIL_SWITCH_S, main, settle_process

REFERENCE = Path(__file__).resolve().parents[2] / "conf" / "gateway.toml"


def test_check_reference_config_prints_a_short_summary() -> None:
    res = CliRunner().invoke(main, ["check", "-c", str(REFERENCE)], env={"EDGE_UPLINK_PASSWORD": None})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert len(lines) <= 10, res.output
    assert lines[0].startswith("gateway") and "gw-01" in lines[0]
    assert any("mqtt://127.0.0.1:1884" in line for line in lines) and lines[-1].startswith("ok")


def test_the_readme_shows_what_check_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (REFERENCE.parents[1] / "README.md").read_text()
    shown = readme.split("$ edge-gateway check -c conf/gateway.toml\n", 1)[1].split("\n$ ", 1)[0].splitlines()
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["check", "-c", str(REFERENCE)], env={"EDGE_UPLINK_PASSWORD": None})
    printed = res.output.replace(str(tmp_path), "/home/pi/edge-gateway").replace(str(REFERENCE), "conf/gateway.toml")
    assert printed.splitlines() == shown


def test_check_print_shows_the_full_config_without_secret_values(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text("[uplink]\nusername = 'u'\npassword = { env = 'EDGE_TEST_PW' }\n")
    res = CliRunner().invoke(main, ["check", "--print", "-c", str(cfg)], env={"EDGE_TEST_PW": "s3cret"})
    assert res.exit_code == 0, res.output
    assert '"id": "gw-01"' in res.output and "EDGE_TEST_PW" in res.output and "s3cret" not in res.output
    assert len(res.output.splitlines()) > 50


def test_check_has_no_q_short_option() -> None:
    """``-q`` is the QoS in device-sim (as in mosquitto_pub); check spells out ``--quiet``."""
    res = CliRunner().invoke(main, ["check", "-q", "-c", str(REFERENCE)])
    assert res.exit_code == 2 and "No such option '-q'" in res.output


def test_check_reference_config_on_a_fresh_machine(tmp_path: Path) -> None:
    """No environment variables at all, run from another directory: it passes."""
    script = Path(sys.executable).parent / "edge-gateway"
    res = subprocess.run([str(script), "check", "-c", str(REFERENCE)], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stderr
    assert "gw-01" in res.stdout and "ok" in res.stderr


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
    res = subprocess.run([str(script), "check", "--quiet", "-c", str(REFERENCE)], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, check=False)
    assert res.returncode == 0, res.stderr


def test_check_summary_names_every_listener(tmp_path: Path) -> None:
    """A TLS-only gateway is not summarised as listening on the plain default port."""
    cfg = tmp_path / "tls.toml"
    cfg.write_text('[gateway]\nid = "g"\ndata_dir = "./data"\n[local_broker]\nplain = false\n'
                   '[local_broker.tls]\nlisten = "0.0.0.0:8883"\n[local_broker.auth]\nmode = "password"\n')
    res = CliRunner().invoke(main, ["check", "-c", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "listening on 0.0.0.0:8883 (TLS), auth password" in res.output
    assert "1883" not in res.output


def test_run_settles_the_process_with_a_short_gil_switch_interval() -> None:
    """paho's network thread waits for the GIL on every uplink message; ``run`` shortens Python's
    default 5 ms switch interval so it does not wait that long behind a busy event loop."""
    before = sys.getswitchinterval()
    try:
        settle_process()
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_S)
        assert before > GIL_SWITCH_S
    finally:
        sys.setswitchinterval(before)
        gc.unfreeze()
