"""A real gateway process: `edge-gateway devices remove` and SIGHUP disconnect the device at once
(the file poll is set to an hour, so only the signal can have done it)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from tests.e2e.gateway_process import scrape, write_config
from tests.e2e.security_support import Client, write_passwords
from tests.support import Mosquitto, eventually, free_port, wait_until


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def gateway_process(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    write_passwords(tmp_path / "passwd", {"dev-a": "pw-a", "dev-b": "pw-b"})
    local_port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, local_port, metrics_port, mosquitto.url, max_count=100, max_age_s=1.0, extra=f"""
[local_broker.auth]
mode = "password"
password_file = "{tmp_path / 'passwd'}"
reload_interval_s = 3600.0
""")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _listening(local_port), timeout=30, message="gateway not listening")
        yield proc, local_port, metrics_port
    finally:
        proc.terminate()
        proc.wait(30)


async def test_remove_then_sighup_disconnects_the_device_at_once(
        gateway_process: tuple[subprocess.Popen[bytes], int, int], tmp_path: Path) -> None:
    proc, port, metrics_port = gateway_process
    a = await Client(port, "dev-a", "dev-a", "pw-a").start().connected()
    b = await Client(port, "dev-b", "dev-b", "pw-b").start().connected()
    res = CliRunner().invoke(main, ["devices", "--password-file", str(tmp_path / "passwd"),
                                    "--pki-dir", str(tmp_path / "pki"), "remove", "dev-a"])
    assert res.exit_code == 0, res.output
    proc.send_signal(signal.SIGHUP)
    await eventually(lambda: a.disconnects > 0, message="dev-a still connected after remove + SIGHUP")
    again = Client(port, "dev-a", "dev-a", "pw-a").start()
    await again.refused()
    assert b.disconnects == 0
    # the endpoint serves a snapshot rebuilt every metrics.refresh_s: wait for the one after the reload
    await eventually(lambda: scrape(metrics_port, "edge_security_credential_reloads") == 1,
                     message=lambda: f"reloads: {scrape(metrics_port, 'edge_security_credential_reloads')}")
    b.stop()
