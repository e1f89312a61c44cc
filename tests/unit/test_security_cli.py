"""``edge-gateway devices`` and the security side of ``check`` / ``run`` / the metrics endpoint."""

from __future__ import annotations

import asyncio
import base64
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from gateway.cli import main
from gateway.config import MetricsSection
from gateway.observe.metrics import serve
from gateway.source.passwords import PasswordHash, read_password_file
from gateway.source.pki import Pki
from tests.e2e.harness import gateway_config, running_gateway
from tests.support import Mosquitto, eventually, free_port


def cli(*args: str, stdin: str | None = None) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args), input=stdin)
    return res.exit_code, res.output


def test_devices_add_list_remove(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    code, out = cli("devices", "--password-file", str(pw), "--pki-dir", str(tmp_path / "pki"),
                    "add", "dev-1", "--generate")
    assert code == 0
    generated = out.splitlines()[0]
    assert PasswordHash.parse(read_password_file(pw)["dev-1"]).matches(generated)
    code, _ = cli("devices", "--password-file", str(pw), "add", "dev-2", "--password-stdin", stdin="typed\n")
    assert code == 0 and PasswordHash.parse(read_password_file(pw)["dev-2"]).matches("typed")
    code, out = cli("devices", "--password-file", str(pw), "--pki-dir", str(tmp_path / "pki"), "list")
    assert code == 0 and "dev-1\tpassword" in out and "dev-2\tpassword" in out
    code, _ = cli("devices", "--password-file", str(pw), "--pki-dir", str(tmp_path / "pki"), "remove", "dev-1")
    assert code == 0 and set(read_password_file(pw)) == {"dev-2"}
    code, _ = cli("devices", "--password-file", str(pw), "--pki-dir", str(tmp_path / "pki"), "remove", "dev-1")
    assert code == 1


@pytest.mark.parametrize("args", [["add", "a/b", "--generate"], ["add", "$gateway", "--generate"],
                                  ["add", "dev-1"], ["add", "dev-1", "--generate", "--password-stdin"]])
def test_devices_add_refuses_bad_input(tmp_path: Path, args: list[str]) -> None:
    code, _ = cli("devices", "--password-file", str(tmp_path / "p"), *args)
    assert code == 2
    assert not (tmp_path / "p").exists()


def test_devices_cert_issues_from_the_gateway_ca_and_remove_revokes(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    code, out = cli("devices", "--password-file", str(tmp_path / "p"), "--pki-dir", str(pki), "cert", "dev-1")
    assert code == 0 and "dev-1.pem" in out
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "devices/dev-1.pem"), str(pki / "devices/dev-1.key"))  # key matches cert
    assert (pki / "ca.key").stat().st_mode & 0o077 == 0
    code, _ = cli("devices", "--password-file", str(tmp_path / "p"), "--pki-dir", str(pki), "remove", "dev-1")
    assert code == 0
    assert [who for _s, who in Pki(pki).revoked_list()] == ["dev-1"]


def test_devices_cert_with_a_corrupt_ca_key_or_a_bad_server_name_exits_2_in_one_line(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    code, out = cli("devices", "--password-file", str(tmp_path / "p"), "--pki-dir", str(pki), "cert", "dev-1",
                    "--server-name", "gätewäy")  # not an A-label: cryptography refuses it
    assert code == 2 and "cannot make the certificate of 'gätewäy'" in out and "Traceback" not in out
    (pki / "ca.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    code, out = cli("devices", "--password-file", str(tmp_path / "p"), "--pki-dir", str(pki), "cert", "dev-2",
                    "--server-name", "localhost")
    assert code == 2 and f"cannot make the certificate of 'localhost' in {pki}" in out
    assert not (pki / "devices" / "dev-2.pem").exists()


def test_none_auth_on_a_lan_listener_exits_2_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[local_broker]\nlisten = '0.0.0.0:1883'\n")
    for command in ("check", "run"):
        code, out = cli(command, "-c", str(cfg))
        assert code == 2 and "local_broker.auth.mode" in out, out
    cfg.write_text("[local_broker]\nlisten = '0.0.0.0:1883'\n[local_broker.auth]\nallow_anonymous_lan = true\n")
    code, out = cli("check", "-c", str(cfg))
    assert code == 0 and "allow_anonymous_lan" in out  # accepted, with a warning


def test_check_warns_about_exposed_metrics_and_clear_text_passwords(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[local_broker]\nlisten = '0.0.0.0:1883'\n[local_broker.auth]\nmode = 'password'\n"
                   "[metrics]\nlisten = '0.0.0.0:9464'\n")
    code, out = cli("check", "-c", str(cfg), "--quiet")
    assert code == 0
    assert "without TLS" in out and "answers anyone" in out and "clear text" in out
    cfg.write_text("[metrics]\nlisten = '127.0.0.1:9464'\n")
    assert cli("check", "-c", str(cfg), "--quiet") == (0, "")


def test_embedded_mode_refuses_local_broker_credentials(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[local_broker]\nusername = 'gw'\n")
    code, out = cli("check", "-c", str(cfg))
    assert code == 2 and "local_broker.username" in out


def test_run_with_a_bad_password_file_exits_2_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("dev-1:plain\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[gateway]\ndata_dir = '{tmp_path}'\n[local_broker.auth]\nmode = 'password'\n")
    code, out = cli("run", "-c", str(cfg))
    assert code == 2 and "passwd:1" in out


def _get(url: str, auth: str | None = None, ctx: ssl.SSLContext | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


async def test_metrics_endpoint_with_basic_auth_and_tls(tmp_path: Path, mosquitto: Mosquitto) -> None:
    pki = Pki(tmp_path / "pki")
    pki.ensure_server_cert(["127.0.0.1"])
    port = free_port()
    cfg = MetricsSection(listen=f"127.0.0.1:{port}", tls_cert_file=pki.server_cert, tls_key_file=pki.server_key,
                         basic_auth_username="prom", basic_auth_password={"env": "UNUSED"})
    async with running_gateway(gateway_config(tmp_path, mosquitto.url)) as svc:
        server = serve(cfg, SecretStr("pw"), svc.board)
        try:
            ctx = ssl.create_default_context(cafile=str(pki.ca_file))
            url = f"https://127.0.0.1:{port}/metrics"
            assert await asyncio.to_thread(_get, url, None, ctx) == (401, "")
            assert (await asyncio.to_thread(_get, url, "prom:wrong", ctx))[0] == 401
            status, body = await asyncio.to_thread(_get, url, "prom:pw", ctx)
            assert status == 200 and "edge_security_denials" in body
            with pytest.raises(urllib.error.URLError):  # a client that does not trust the gateway's CA
                await asyncio.to_thread(_get, url, "prom:pw", ssl.create_default_context())
            # the probes are served over the same TLS, without basic auth
            await eventually(lambda: svc.board.latest() is not None)
            status, body = await asyncio.to_thread(_get, f"https://127.0.0.1:{port}/readyz", None, ctx)
            assert status == 200 and '"ready": true' in body
        finally:
            server.shutdown()
            server.server_close()


def test_devices_provision_writes_hashes_and_a_credentials_file(tmp_path: Path) -> None:
    pw, creds = tmp_path / "passwd", tmp_path / "devices.txt"
    code, _ = cli("devices", "--password-file", str(pw), "provision", "lab-0001", "lab-0002",
                  "--credentials-out", str(creds))
    assert code == 0
    plain = dict(line.split(":", 1) for line in creds.read_text().splitlines())
    hashes = read_password_file(pw)
    assert set(plain) == set(hashes) == {"lab-0001", "lab-0002"}
    assert all(PasswordHash.parse(hashes[d]).matches(plain[d]) for d in plain)
    assert creds.stat().st_mode & 0o077 == 0
