"""The one way tests run the gateway as a real process: the process, its config file, its log and
its /metrics."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from tests.support import eventually, wait_until

# MQTT 3.1.1 CONNECT (clean session, keepalive 60, client id "probe") followed by DISCONNECT
_CONNECT_DISCONNECT = bytes([0x10, 17, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 5]) + b"probe" + bytes([0xE0, 0])


class GatewayProcess:
    """``edge-gateway run -c CONFIG`` as a child process, its log (stderr) in a file (a pipe could fill
    up and stall it): ``log`` if given, else a new file beside the config.

    The waits fail at once, with the gateway's log, when the process exits instead of starting, so a
    gateway that cannot start never costs a timeout. Use it as a context manager to have it stopped
    (SIGTERM) however the test ends."""

    def __init__(self, config: Path, local_port: int, metrics_port: int | None = None, *,
                 log: Path | None = None, memory_cap: int = 0) -> None:
        """``memory_cap``: the process' address space limit in bytes (RLIMIT_AS; 0 = none)."""
        self.local_port = local_port
        self.metrics_port = metrics_port
        if log is None:
            fd, name = tempfile.mkstemp(prefix="gateway-", suffix=".log", dir=config.parent)
            os.close(fd)
            log = Path(name)
        self.log_path = log
        with log.open("wb") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)],
                                         stdout=subprocess.DEVNULL, stderr=out,
                                         env={**os.environ, "MALLOC_ARENA_MAX": "2"} if memory_cap else None)
        if memory_cap:  # set at once, long before the interpreter has imported the gateway
            resource.prlimit(self.proc.pid, resource.RLIMIT_AS, (memory_cap, memory_cap))

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.proc.poll() is None:
            self.terminate()

    def log(self) -> str:
        """Everything the process has logged so far."""
        return self.log_path.read_text(errors="replace")

    def alive(self) -> None:
        """Fail, with the log, if the process has exited."""
        assert self.proc.poll() is None, f"gateway exited with {self.proc.returncode}:\n{self.log()}"

    def _ready(self) -> bool:
        """The local broker answers an MQTT CONNECT and, with a metrics port, /metrics is served."""
        self.alive()
        if self.metrics_port is not None and self.metric("edge_readings_received") is None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.local_port), 0.5) as sock:
                sock.sendall(_CONNECT_DISCONNECT)  # a well-behaved client: the broker logs nothing
                return len(sock.recv(4)) > 0  # CONNACK
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30) -> None:
        """Block until the gateway is up (see :meth:`_ready`)."""
        wait_until(self._ready, timeout, message=lambda: f"gateway did not start:\n{self.log()}")

    async def ready(self, timeout: float = 30) -> None:
        """Wait, on the event loop, until the gateway is up (see :meth:`_ready`)."""
        await eventually(self._ready, timeout, message=lambda: f"gateway did not start:\n{self.log()}")

    def metric(self, name: str) -> float | None:
        assert self.metrics_port is not None, "started without a metrics port"
        return scrape(self.metrics_port, name)

    def send_signal(self, sig: signal.Signals) -> None:
        self.alive()
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """kill -9, and wait until it is gone."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        """SIGTERM (the gateway flushes and stops); its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


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
