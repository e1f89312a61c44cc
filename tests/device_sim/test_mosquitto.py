"""Interop with mosquitto: MQTT 5 and TLS (verified with a CA, and --insecure)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from device_sim.cli import main
from tests.support import Mosquitto, free_port, require_tool


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def certs() -> Iterator[Path]:
    """A CA and a server certificate for 127.0.0.1, readable by the mosquitto user."""
    require_tool("openssl")
    folder = Path(tempfile.mkdtemp(prefix="devsim-tls-"))
    os.chmod(folder, 0o755)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    for f in folder.iterdir():
        os.chmod(f, 0o644)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_mqtt5_run_against_mosquitto(mosquitto: Mosquitto) -> None:
    result = invoke("run", "-p", str(mosquitto.port), "--mqtt-version", "5", "--devices", "3", "--count", "5",
                    "--rate-hz", "50", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["sent"] == 15 and summary["failed"] == 0


def test_tls_with_ca_and_insecure(certs: Path) -> None:
    tls_port = free_port()
    broker = Mosquitto(extra_conf=(f"listener {tls_port} 127.0.0.1\n"
                                   f"cafile {certs / 'ca.crt'}\ncertfile {certs / 'server.crt'}\n"
                                   f"keyfile {certs / 'server.key'}\n"))
    broker.start()
    try:
        port = str(tls_port)
        ok = invoke("run", "-p", port, "--cafile", str(certs / "ca.crt"), "--count", "3", "--rate-hz", "50",
                    "--json")
        assert ok.exit_code == 0, ok.output
        assert json.loads(ok.stdout)["sent"] == 3
        unverified = invoke("run", "-p", port, "--tls", "--count", "1", "--connect-timeout", "5")
        assert unverified.exit_code == 1 and "certificate verify failed" in unverified.output
        insecure = invoke("run", "-p", port, "--tls", "--insecure", "--count", "2", "--rate-hz", "50", "--json")
        assert insecure.exit_code == 0, insecure.output
        assert json.loads(insecure.stdout)["sent"] == 2
    finally:
        broker.cleanup()
