"""The shipped systemd unit: `systemd-analyze verify` accepts it without a warning, it runs as a
dedicated user in its state directory (where the reference config's relative data_dir lands), does
not restart on a config error (exit 2), and is hardened."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

from tests.support import require_tool

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "conf" / "systemd" / "edge-gateway.service"


def service_section(unit: Path = UNIT) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    return dict(parser["Service"])


def analyze_verify(unit: Path, instance: str, programs: list[str], root: Path) -> None:
    """``systemd-analyze verify`` of ``unit`` (as ``instance``) in an image root holding the unit, the
    system's own units (targets it orders against) and stand-ins for the programs it runs, so the
    check does not depend on what this machine has installed. Unknown keys are only warnings: none
    are allowed."""
    analyze = require_tool("systemd-analyze")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    shutil.copy(unit, units / unit.name)
    for command in programs:
        program = root / command.split()[0].lstrip("/")
        program.parent.mkdir(parents=True, exist_ok=True)
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    res = subprocess.run([analyze, "verify", f"--root={root}", instance], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    section = service_section()
    analyze_verify(UNIT, UNIT.name, [section["ExecStart"], section["ExecReload"]], tmp_path)


def test_the_unit_runs_as_its_own_user_in_its_state_directory() -> None:
    s = service_section()
    assert s["User"] not in ("", "root") and s["Group"] == s["User"]
    state = PurePosixPath("/var/lib") / s["StateDirectory"]
    assert PurePosixPath(s["WorkingDirectory"]) == state
    assert s["ReadWritePaths"] == str(state)
    reference = tomllib.loads((ROOT / "conf" / "gateway.toml").read_text())
    data_dir = PurePosixPath(reference["gateway"]["data_dir"])
    assert not data_dir.is_absolute()  # so it resolves inside the state directory, the only writable place
    assert s["EnvironmentFile"].lstrip("-").startswith("/etc/edge-gateway/")
    assert s["ExecStart"].endswith("run -c /etc/edge-gateway/gateway.toml")


def test_a_config_error_is_not_restarted_and_the_service_is_hardened() -> None:
    s = service_section()
    assert s["Restart"] == "on-failure"
    assert s["RestartPreventExitStatus"].split() == ["2"]
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                       ("ProtectHome", "yes"), ("PrivateDevices", "yes"), ("CapabilityBoundingSet", "")):
        assert s.get(key) == value, key


def test_the_unit_gives_the_status_file_a_ram_disk_where_the_docs_say() -> None:
    """OPERATIONS and the reference config tell SD-card users to put the status file in
    /run/edge-gateway: the unit must create that directory (systemd mounts /run as tmpfs)."""
    section = service_section()
    assert section["RuntimeDirectory"] == "edge-gateway"
    documented = '[status] file = "/run/edge-gateway/status.json"'
    assert documented in (ROOT / "docs" / "OPERATIONS.md").read_text().replace("\n  ", " ")
    assert "/run/edge-gateway/status.json" in (ROOT / "conf" / "gateway.toml").read_text()


SINK_UNIT = ROOT / "conf" / "systemd" / "edge-sink@.service"


def test_systemd_analyze_verifies_the_sink_worker_template(tmp_path: Path) -> None:
    analyze_verify(SINK_UNIT, "edge-sink@1.service", [service_section(SINK_UNIT)["ExecStart"]], tmp_path)


def test_the_sink_worker_template_runs_a_command_the_cli_accepts(tmp_path: Path) -> None:
    """Each instance is a named member of the shared group, always restarted (its session holds
    its share), and its command line parses with the real CLI."""
    from bridge.cloud.cli import sink

    s = service_section(SINK_UNIT)
    assert s["Restart"] == "always" and s["RestartPreventExitStatus"].split() == ["2"]
    values = {"${SINK_URL}": "mqtt://127.0.0.1:1883", "${SINK_DB}": "postgresql://sink@127.0.0.1:5432/edge",
              "${SINK_GROUP}": "fleet", "${CREDENTIALS_DIRECTORY}": str(tmp_path), "%i": "1"}
    args = s["ExecStart"].split()
    assert args[1] == "sink" and "--worker" in args and args[args.index("--worker") + 1] == "%i"
    (tmp_path / "db-password").write_text("pw\n")
    resolved = [values.get(a, a).replace("${CREDENTIALS_DIRECTORY}", str(tmp_path)) for a in args[2:]]
    ctx = sink.make_context("sink", resolved)
    assert ctx.params["worker"] == "1" and ctx.params["shared_group"] == "fleet"
    assert ctx.params["db_password_file"] == tmp_path / "db-password"
