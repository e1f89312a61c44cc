"""``sink``, ``command`` and ``push-config`` log in to a cloud broker that requires a password or a
client certificate: the same options on all three, the password never on the command line."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import ClientSettings, Login, TlsSettings
from gateway.cli import main
from tests.pki import CertAuthority
from tests.support import Mosquitto, eventually, free_port, mosquitto_password_line

PASSWORD = "op-s3cret"


@dataclass
class AuthBroker:
    broker: Mosquitto
    tls_port: int
    ca: CertAuthority
    client_cert: Path
    client_key: Path

    @property
    def url(self) -> str:
        return self.broker.url


@pytest.fixture
def auth_broker() -> Iterator[AuthBroker]:
    port, tls_port = free_port(), free_port()
    config = (f"per_listener_settings true\nlistener {port} 127.0.0.1\nallow_anonymous false\n"
              "password_file {dir}/passwd\n"
              f"listener {tls_port} 127.0.0.1\n"
              "cafile {dir}/pki/test-ca.crt\ncertfile {dir}/pki/server.crt\nkeyfile {dir}/pki/server.key\n"
              "require_certificate true\nuse_identity_as_username true\n"
              "persistence false\nlog_dest stderr\nlog_type error\n")
    broker = Mosquitto(port, config=config)  # its folder is readable by the mosquitto user
    pki = broker.dir / "pki"
    pki.mkdir()
    os.chmod(pki, 0o755)
    ca = CertAuthority(pki)
    server, client = ca.server(), ca.client("operator")
    assert (ca.cert, server.cert, server.key) == (pki / "test-ca.crt", pki / "server.crt", pki / "server.key")
    for p in pki.iterdir():
        os.chmod(p, 0o644)
    (broker.dir / "passwd").write_text(mosquitto_password_line("operator", PASSWORD) + "\n")
    os.chmod(broker.dir / "passwd", 0o644)
    broker.start()
    try:
        yield AuthBroker(broker, tls_port, ca, client.cert, client.key)
    finally:
        broker.stop()


def command_line(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args), env=env)
    return res.exit_code, res.output


@pytest.mark.parametrize("cmd", [["command", "--gateway", "gw-1", "dev-1", "ping"],
                                 ["push-config", "--gateway", "gw-1", "--no-retain", "CONFIG"]])
def test_operator_commands_log_in_with_a_password_from_env_or_file(
        auth_broker: AuthBroker, tmp_path: Path, cmd: list[str]) -> None:
    pushed = tmp_path / "push.toml"
    pushed.write_text("version = 1\n")
    cmd = [str(pushed) if a == "CONFIG" else a for a in cmd]
    pw_file = tmp_path / "pw"
    pw_file.write_text(PASSWORD + "\n")
    base = [*cmd, "--url", auth_broker.url, "--timeout", "1"]
    # logged in: the broker takes the request, and nothing answers (no gateway behind it)
    code, out = invoke(*base, "--username", "operator", "--password-env", "OP_PW", env={"OP_PW": PASSWORD})
    assert code == 1 and "no answer" in out, out
    code, out = invoke(*base, "--username", "operator", "--password-file", str(pw_file))
    assert code == 1 and "no answer" in out, out
    # a wrong password or none: refused by the broker, said so
    code, out = invoke(*base, "--username", "operator", "--password-env", "OP_PW", env={"OP_PW": "wrong"})
    assert code == 1 and "no answer" not in out and "error" in out, out
    code, out = invoke(*base)
    assert code == 1 and "no answer" not in out, out
    # a client certificate on the TLS listener
    tls_url = f"mqtts://127.0.0.1:{auth_broker.tls_port}"
    code, out = invoke(*cmd, "--url", tls_url, "--timeout", "1", "--cafile", str(auth_broker.ca.cert),
                       "--cert", str(auth_broker.client_cert), "--key", str(auth_broker.client_key))
    assert code == 1 and "no answer" in out, out


@pytest.mark.parametrize(("extra", "env", "message"), [
    (["--password-env", "NOPE_UNSET"], {}, "NOPE_UNSET is not set"),
    (["--password-env", "OP_PW"], {"OP_PW": "x"}, "needs --username"),
    (["--username", "u", "--password-env", "OP_PW", "--password-file", "/etc/hostname"], {"OP_PW": "x"},
     "not both"),
])
def test_bad_login_options_exit_2(extra: list[str], env: dict[str, str], message: str) -> None:
    for cmd in (["command", "--gateway", "gw-1", "dev-1", "ping"], ["sink", "--db", "/tmp/unused.sqlite"]):
        code, out = invoke(*cmd, "--url", "mqtt://127.0.0.1:1", *extra, env=env)
        assert code == 2 and message in out, out


async def test_sink_logs_in_and_its_password_is_not_in_its_command_line(auth_broker: AuthBroker,
                                                                      tmp_path: Path) -> None:
    db = tmp_path / "sink.sqlite"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "sink", "--url", auth_broker.url, "--db", str(db), "--client-id",
        "sink-a", "--username", "operator", "--password-env", "OP_PW",
        env={**os.environ, "OP_PW": PASSWORD}, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        settings = ClientSettings(client_id="status-writer", protocol="5", username="operator", password=PASSWORD)
        conn = await MqttConnection.open(auth_broker.url, settings)

        def stored() -> bool:
            if not db.exists():
                return False
            with sqlite3.connect(db) as con:
                try:
                    return bool(con.execute("SELECT 1 FROM status WHERE gateway = 'gw-1'").fetchall())
                except sqlite3.OperationalError:
                    return False

        async def publish_until_stored() -> bool:
            await conn.publish("edge/gw-1/status", b"online", 1, True)
            return stored()

        try:
            await eventually(publish_until_stored, timeout=30, interval=0.3)
        finally:
            await conn.close()
        shown = command_line(proc.pid)  # what ps shows
        assert PASSWORD.encode() not in shown and b"sink-a" in shown
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]


def test_login_carries_tls_files() -> None:
    tls = TlsSettings(ca_file="/ca")
    assert Login("u", "p", tls).tls == tls and "p" not in repr(Login("u", "p"))
