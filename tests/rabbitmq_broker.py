"""A real single-node RabbitMQ (Debian's ``rabbitmq-server`` 3.10) with the ``rabbitmq_mqtt`` plugin,
started in a temp dir on free ports, for the MQTT interop test.

Everything the node writes lives in the temp dir (``RABBITMQ_MNESIA_BASE``, ``RABBITMQ_LOG_BASE``, a
``HOME`` for the Erlang cookie); it listens on 127.0.0.1 only, with its own Erlang distribution port
and its own epmd port, so it never meets a packaged service on the same host. The server script
under /usr/lib/rabbitmq/bin runs as the calling user (root is allowed; the /usr/sbin wrapper would
switch to the ``rabbitmq`` user). Measured here: ~15 s from start to the MQTT listener answering.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port, wait_until

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


def rabbitmq_server() -> str:
    """Path of the server script; under CI a missing rabbitmq-server fails instead of skipping."""
    if not os.path.exists(SERVER):
        if os.environ.get("CI"):
            pytest.fail("rabbitmq-server not found (CI must install Debian's rabbitmq-server: see .ci/run)")
        pytest.skip("rabbitmq-server not installed")
    return SERVER


class RabbitMQ:
    """One RabbitMQ node with its MQTT listener on ``mqtt_port`` (MQTT 3.1.1, anonymous allowed)."""

    def __init__(self) -> None:
        self.server = rabbitmq_server()
        self.dir = Path(tempfile.mkdtemp(prefix="rabbitmq-"))
        self.mqtt_port, amqp_port, dist_port, self.epmd_port = free_port(), free_port(), free_port(), free_port()
        self.url = f"mqtt://127.0.0.1:{self.mqtt_port}"
        (self.dir / "home").mkdir()
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = true\n"
            "loopback_users = none\n")
        self.env = {
            **os.environ,
            "HOME": str(self.dir / "home"),
            "RABBITMQ_NODENAME": f"edge-test-{self.mqtt_port}@localhost",
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
        }
        self.log = self.dir / "stdout.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> None:
        """Start the node and wait until its MQTT listener accepts connections."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([self.server], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_until(self._listening, timeout, interval=0.1,
                   message=lambda: f"RabbitMQ MQTT listener not up:\n{self.log.read_text(errors='replace')[-3000:]}")

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"rabbitmq-server exited with {self.proc.returncode}:\n"
                                 f"{self.log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.mqtt_port), 0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the node (SIGTERM to its process group: the script, the Erlang VM and its helpers)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        self._stop_epmd()

    def _stop_epmd(self) -> None:
        """epmd daemonizes out of the process group: ask it (on our own port) to stop."""
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        if os.path.exists(epmd):
            subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, check=False)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_rabbitmq() -> Iterator[RabbitMQ]:
    broker = RabbitMQ()
    try:
        broker.start()
        yield broker
    finally:
        broker.cleanup()
