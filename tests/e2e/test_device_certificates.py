"""Certificate identity on the embedded broker's TLS listener: the gateway's CA, a foreign CA, an
expired certificate, a revoked one, none at all; identity from the CN binds the ACL."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.service import GatewayService
from gateway.source.pki import Pki
from tests.e2e.harness import gateway_config, running_gateway
from tests.e2e.security_support import write_passwords
from tests.support import Mosquitto, RecordingClient, eventually


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    pki = Pki(tmp_path / "pki")
    pki.ensure_ca()
    pki.ensure_server_cert(["localhost", "127.0.0.1"])
    return pki


@pytest.fixture
async def gateway(tmp_path: Path, mosquitto: Mosquitto, pki: Pki) -> AsyncIterator[GatewayService]:
    cfg = gateway_config(tmp_path, mosquitto.url, local_broker={
        "plain": False, "tls": {"listen": "0.0.0.0:0", "require_client_cert": False},
        "auth": {"mode": "certificate", "pki_dir": str(pki.dir), "reload_interval_s": 0.1}})
    async with running_gateway(cfg) as svc:
        yield svc


def tls_port(svc: GatewayService) -> int:
    assert svc.embedded is not None
    return svc.embedded.tls_address.port


def tls(pki: Pki, device: str | None) -> dict[str, Any]:
    opts: dict[str, Any] = {"ca_certs": str(pki.ca_file), "tls_version": ssl.PROTOCOL_TLS_CLIENT}
    if device is not None:
        where = pki.dir / "devices"
        opts.update(certfile=str(where / f"{device}.pem"), keyfile=str(where / f"{device}.key"))
    return opts


def denied(svc: GatewayService, reason: str) -> int:
    return int(svc.snapshot()["security"]["denied"].get(reason, 0))


async def test_a_certificate_from_the_gateway_ca_is_the_identity(gateway: GatewayService, pki: Pki) -> None:
    pki.issue_device("dev-a")
    a = await RecordingClient(tls_port(gateway), "dev-a", tls=tls(pki, "dev-a")).start().connected()
    assert await a.subscribe("devices/dev-a/commands/#") == [1]
    assert await a.subscribe("devices/dev-b/commands/#") == [0x80]
    impostor = RecordingClient(tls_port(gateway), "dev-b", "dev-b", tls=tls(pki, "dev-a")).start()
    await impostor.refused()  # username and client id must be the certificate's identity
    assert denied(gateway, "identity_mismatch") == 1
    a.stop()


async def test_foreign_ca_expired_and_missing_certificates_are_refused(gateway: GatewayService, pki: Pki,
                                                                       tmp_path: Path) -> None:
    foreign = Pki(tmp_path / "foreign")
    foreign.issue_device("dev-a")
    foreign_opts = tls(pki, None) | {"certfile": str(foreign.dir / "devices/dev-a.pem"),
                                     "keyfile": str(foreign.dir / "devices/dev-a.key")}
    pki.issue_device("old", days=1, now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30))
    for attempt in (RecordingClient(tls_port(gateway), "dev-a", tls=foreign_opts),
                    RecordingClient(tls_port(gateway), "old", tls=tls(pki, "old"))):
        attempt.start()
        await attempt.refused()  # the TLS handshake fails
        assert attempt.connack is None
    anonymous = RecordingClient(tls_port(gateway), "dev-a", tls=tls(pki, None)).start()
    await anonymous.refused()
    assert denied(gateway, "cert_required") == 1


async def test_a_revoked_certificate_is_disconnected_and_refused(gateway: GatewayService, pki: Pki) -> None:
    pki.issue_device("dev-a")
    pki.issue_device("dev-b")
    a = await RecordingClient(tls_port(gateway), "dev-a", tls=tls(pki, "dev-a")).start().connected()
    b = await RecordingClient(tls_port(gateway), "dev-b", tls=tls(pki, "dev-b")).start().connected()
    assert pki.revoke_device("dev-a")
    await eventually(lambda: a.disconnects > 0, message="revoked device still connected")
    again = RecordingClient(tls_port(gateway), "dev-a", tls=tls(pki, "dev-a")).start()
    await again.refused()
    assert denied(gateway, "cert_revoked") == 1 and b.disconnects == 0
    b.stop()


@pytest.mark.parametrize("mode", ["either", "both"])
async def test_either_and_both_modes(tmp_path: Path, mosquitto: Mosquitto, pki: Pki, mode: str) -> None:
    write_passwords(tmp_path / "passwd", {"dev-a": "pw-a", "dev-b": "pw-b"})
    pki.issue_device("dev-a")
    cfg = gateway_config(tmp_path, mosquitto.url, local_broker={
        "plain": False, "tls": {"listen": "127.0.0.1:0", "min_version": "1.3"},
        "auth": {"mode": mode, "pki_dir": str(pki.dir), "password_file": str(tmp_path / "passwd"),
                 "client_id": "{device_id}-*"}})  # several connections of one device at once
    async with running_gateway(cfg) as svc:
        port = tls_port(svc)
        cert_only = RecordingClient(port, "dev-a-1", tls=tls(pki, "dev-a")).start()
        password_only = RecordingClient(port, "dev-b-1", "dev-b", "pw-b", tls=tls(pki, None)).start()
        both = RecordingClient(port, "dev-a-2", "dev-a", "pw-a", tls=tls(pki, "dev-a")).start()
        both_wrong = RecordingClient(port, "dev-a-3", "dev-a", "pw-b", tls=tls(pki, "dev-a")).start()
        ctx12 = ssl.create_default_context(cafile=str(pki.ca_file))
        ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
        tls12 = RecordingClient(port, "dev-b-2", "dev-b", "pw-b", tls=ctx12).start()
        await both.connected()
        if mode == "either":  # a certificate, or else a password
            await cert_only.connected()
            await password_only.connected()
        else:  # both, for the same identity
            await cert_only.refused()
            await password_only.refused()
        await both_wrong.refused()
        await tls12.refused()  # min_version = "1.3": the handshake fails
        for c in (cert_only, password_only, both, both_wrong, tls12):
            c.stop()
