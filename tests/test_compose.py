"""The compose stack: valid for docker-compose, every service supervised and health-checked, and
every gateway config it mounts passes `edge-gateway check`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose_config() -> dict[str, object]:
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (CI must install Debian's docker-compose package)")
        pytest.skip("docker-compose not installed")
    out = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True,
                         text=True, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr
    return dict(yaml.safe_load(out.stdout))


def test_compose_file_is_valid_and_services_are_supervised() -> None:
    cfg = compose_config()
    services = cfg["services"]
    assert isinstance(services, dict)
    assert {"cloud", "gateway", "sink", "devices", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        assert "healthcheck" in svc, f"{name} has no health check"
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), f"{name} has no restart policy"


def mounted_gateway_configs() -> list[Path]:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "./conf:/etc/edge-gateway" in text
    found = []
    for line in text.splitlines():
        if "/etc/edge-gateway/" in line and ".toml" in line:
            for token in line.replace('"', " ").replace(",", " ").replace("[", " ").replace("]", " ").split():
                if token.startswith("/etc/edge-gateway/") and token.endswith(".toml"):
                    found.append(ROOT / "conf" / token.removeprefix("/etc/edge-gateway/"))
    return found


def test_every_mounted_gateway_config_passes_check() -> None:
    configs = mounted_gateway_configs()
    assert configs, "compose mounts no gateway config"
    for path in configs:
        assert path.is_file(), path
        res = subprocess.run([sys.executable, "-m", "gateway", "check", "--quiet", "-c", str(path)],
                             capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr


def test_the_stack_authenticates_devices() -> None:
    from gateway.config import load_config

    cfg = compose_config()
    services = cfg["services"]
    assert isinstance(services, dict)
    for path in mounted_gateway_configs():
        gw, _secrets = load_config(path)
        assert gw.local_broker.auth.mode != "none", f"{path}: devices connect without an identity"
    sim = " ".join(map(str, services["devices"]["command"]))
    assert "--password-file /var/lib/edge-devices/devices.credentials" in sim
    provision = " ".join(map(str, services["provision"]["command"]))
    assert "provision" in provision and "--credentials-out /var/lib/edge-devices/devices.credentials" in provision
    assert services["gateway"]["depends_on"]["provision"]["condition"] == "service_completed_successfully"


def test_every_service_rotates_its_log_and_has_a_memory_limit() -> None:
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "version" not in raw, "the top-level version key is obsolete"
    services = compose_config()["services"]
    assert isinstance(services, dict)
    for name, svc in services.items():
        logging = svc.get("logging", {})
        assert logging.get("driver") == "json-file", f"{name} logs without rotation"
        assert {"max-size", "max-file"} <= set(logging.get("options", {})), f"{name} logs without rotation"
        assert svc.get("mem_limit"), f"{name} has no memory limit"
        assert str(svc.get("user", "edge")) not in ("0", "root"), f"{name} runs as root"


def test_the_gateway_is_healthy_when_ready_and_the_cloud_broker_saves_on_changes() -> None:
    services = compose_config()["services"]
    assert isinstance(services, dict)
    probe = " ".join(map(str, services["gateway"]["healthcheck"]["test"]))
    assert "http://127.0.0.1:9464/readyz" in probe
    gateway_toml = (ROOT / "conf" / "compose" / "gateway.toml").read_text()
    assert 'listen = "0.0.0.0:9464"' in gateway_toml  # the port the probe asks
    mosquitto = (ROOT / "conf" / "compose" / "mosquitto.conf").read_text().splitlines()
    assert "persistence true" in mosquitto and "autosave_on_changes true" in mosquitto


def test_the_image_runs_unprivileged_with_a_health_check_and_runtime_dependencies_only() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")):]  # the image's own stage
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    text = "\n".join(final)
    assert "HEALTHCHECK" in text and "/readyz" in text
    assert "chown edge:edge" in text and "/data" in text.split("chown edge:edge", 1)[1].splitlines()[0]
    installs = [line for line in lines if "pip install" in line]
    assert installs and all("[" not in line for line in installs), installs  # no test/dev extras
