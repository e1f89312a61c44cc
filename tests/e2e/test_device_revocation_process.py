"""A real gateway process: `edge-gateway devices remove` and SIGHUP disconnect the device at once
(the file poll is set to an hour, so only the signal can have done it)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from tests.e2e.gateway_process import GatewayProcess, write_config
from tests.e2e.security_support import write_passwords
from tests.support import Mosquitto, RecordingClient, eventually, free_port


@pytest.fixture
def gateway_process(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[GatewayProcess]:
    write_passwords(tmp_path / "passwd", {"dev-a": "pw-a", "dev-b": "pw-b"})
    local_port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, local_port, metrics_port, mosquitto.url, max_count=100, max_age_s=1.0, extra=f"""
[local_broker.auth]
mode = "password"
password_file = "{tmp_path / 'passwd'}"
reload_interval_s = 3600.0
""")
    with GatewayProcess(config, local_port, metrics_port) as gateway:
        gateway.wait_ready()
        yield gateway


async def test_remove_then_sighup_disconnects_the_device_at_once(
        gateway_process: GatewayProcess, tmp_path: Path) -> None:
    port, metric = gateway_process.local_port, gateway_process.metric
    a = await RecordingClient(port, "dev-a", "dev-a", "pw-a").start().connected()
    b = await RecordingClient(port, "dev-b", "dev-b", "pw-b").start().connected()
    res = CliRunner().invoke(main, ["devices", "--password-file", str(tmp_path / "passwd"),
                                    "--pki-dir", str(tmp_path / "pki"), "remove", "dev-a"])
    assert res.exit_code == 0, res.output
    gateway_process.send_signal(signal.SIGHUP)
    await eventually(lambda: a.disconnects > 0, message="dev-a still connected after remove + SIGHUP")
    again = RecordingClient(port, "dev-a", "dev-a", "pw-a").start()
    await again.refused()
    assert b.disconnects == 0
    # the endpoint serves a snapshot rebuilt every metrics.refresh_s: wait for the one after the reload
    await eventually(lambda: metric("edge_security_credential_reloads") == 1,
                     message=lambda: f"reloads: {metric('edge_security_credential_reloads')}")
    b.stop()
