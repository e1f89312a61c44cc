"""Helpers for tests that run the gateway as a real process: the process, its config file, its
log and its /metrics."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from tests.support import wait_until

# MQTT 3.1.1 CONNECT (clean session, keepalive 60, client id "probe") followed by DISCONNECT
_CONNECT_DISCONNECT = bytes([0x10, 17, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 5]) + b"probe" + bytes([0xE0, 0])


class GatewayProcess:
    """``edge-gateway run -c CONFIG`` as a child process; its log (stderr) goes to a file
    beside the config."""

    def __init__(self, config: Path, local_port: int) -> None:
        self._log = tempfile.NamedTemporaryFile(prefix="gateway-", suffix=".log", dir=config.parent, delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=self._log)
        self.local_port = local_port

    def log(self) -> str:
        """Everything the process has logged so far."""
        return Path(self._log.name).read_text(errors="replace")

    def wait_listening(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.log()
            try:
                with socket.create_connection(("127.0.0.1", self.local_port), 0.5) as sock:
                    sock.sendall(_CONNECT_DISCONNECT)  # a well-behaved client: the broker logs nothing
                    sock.recv(4)  # CONNACK
                return True
            except OSError:
                return False

        wait_until(up, message="gateway did not start listening")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self._log.close()
        return code


def write_config(tmp: Path, local_port: int, metrics_port: int, cloud_url: str, *, max_count: int,
                 max_age_s: float, log_level: str = "warning", extra: str = "") -> Path:
    """A gateway config in ``tmp`` (data dir ``tmp/data``) with the metrics endpoint on; ``extra``
    TOML is appended."""
    path = tmp / "gw.toml"
    path.write_text(f"""
[gateway]
id = "gw-test"
data_dir = "{tmp / 'data'}"
[local_broker]
listen = "127.0.0.1:{local_port}"
[uplink]
urls = ["{cloud_url}"]
backoff_base_s = 0.05
backoff_cap_s = 0.5
[batch]
max_count = {max_count}
max_age_s = {max_age_s}
[metrics]
listen = "127.0.0.1:{metrics_port}"
[log]
level = "{log_level}"
{extra}
""")
    return path


def metrics_text(port: int) -> str:
    """The gateway's /metrics page, or "" while the endpoint is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def scrape(port: int, name: str) -> float | None:
    """One unlabelled value from the gateway's /metrics, or None when absent."""
    for line in metrics_text(port).splitlines():
        if line.startswith((name + " ", name + "_total ")):
            return float(line.split()[-1])
    return None
