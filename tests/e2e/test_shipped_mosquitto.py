"""The shipped conf/mosquitto/ (external broker mode) enforces the device rules with the real mosquitto:
no anonymous clients, passwords checked, each device confined to its own topics, only the gateway
sends commands, no retained messages, no session takeover, client certificates from the right CA only.

The broker runs the shipped mosquitto.conf itself, with only its paths and ports substituted, and
the shipped ACL file in place.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway.config import Secrets
from gateway.process.decode import Decoder
from gateway.service import GatewayService
from gateway.source.broker import EmbeddedBroker
from tests.e2e.harness import gateway_config
from tests.pki import Issued
from tests.secure_mosquitto import Deployment, secure_mosquitto
from tests.support import RecordingClient, eventually, require_tool, wait_until

PASSWORDS = {"dev-a": "pw-a", "dev-b": "pw-b", "edge-gateway": "pw-gw"}
GATEWAY_TOPICS = ["devices/+/telemetry", "devices/+/telemetry/+", "devices/+/events", "devices/+/responses"]
WAIT_S = 10.0
REFUSED = ("closed before CONNACK", "refused during connect")  # the TLS handshake failed

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    with secure_mosquitto(PASSWORDS) as running:
        yield running


def connect(port: int, username: str | None = None, password: str | None = None, *,
            client_id: str | None = None, tls: tuple[Path, Issued | None] | None = None) -> RecordingClient:
    """Connect and wait for the outcome: ``.reason`` is "Success", the broker's refusal, or why the
    connection ended before a CONNACK (a TLS handshake refused, say)."""
    options = None
    if tls is not None:
        cafile, issued = tls
        options = {"ca_certs": str(cafile), "certfile": str(issued.cert) if issued else None,
                   "keyfile": str(issued.key) if issued else None, "cert_reqs": ssl.CERT_REQUIRED}
    client = RecordingClient(port, client_id or username, username, password,  # a device's client id is its id
                             tls=options, timeout=WAIT_S)
    if client.start().wait_settled() != "Success":
        client.stop()
    return client


@pytest.fixture
def clients(deployment: Deployment) -> Iterator[dict[str, RecordingClient]]:
    """dev-a, dev-b and the gateway, connected with their passwords; the gateway subscribed to every
    device topic, dev-b to its own commands."""
    made = {u: connect(deployment.port, u, p) for u, p in PASSWORDS.items()}
    try:
        assert {u: c.reason for u, c in made.items()} == dict.fromkeys(PASSWORDS, "Success")
        assert made["edge-gateway"].wait_subscribe(*GATEWAY_TOPICS) == [1] * len(GATEWAY_TOPICS)
        assert made["dev-b"].wait_subscribe("devices/dev-b/commands/#") == [1]
        yield made
    finally:
        for client in made.values():
            client.stop()


def test_anonymous_unknown_and_wrong_passwords_are_refused(deployment: Deployment) -> None:
    assert connect(deployment.port).reason == "Not authorized"
    assert connect(deployment.port, "dev-a", "wrong").reason == "Not authorized"
    assert connect(deployment.port, "dev-z", "pw-a").reason == "Not authorized"
    assert connect(deployment.port, "dev-a").reason == "Not authorized"  # username, no password
    good = connect(deployment.port, "dev-a", "pw-a")
    assert good.reason == "Success"
    good.stop()


def test_a_device_cannot_publish_as_another(clients: dict[str, RecordingClient]) -> None:
    a, gateway = clients["dev-a"], clients["edge-gateway"]
    for topic in ("devices/dev-b/telemetry", "devices/dev-b/telemetry/t", "devices/dev-b/events",
                  "devices/dev-b/responses", "devices/other/telemetry"):
        a.send(topic)
    assert a.wait_publish("devices/dev-a/telemetry")  # published after the forgeries, on the same connection
    assert a.wait_publish("devices/dev-a/telemetry/t")
    assert a.wait_publish("devices/dev-a/events")
    assert a.wait_publish("devices/dev-a/responses")
    wait_until(lambda: gateway.has("devices/dev-a/responses"), WAIT_S)
    assert gateway.topics() == ["devices/dev-a/telemetry", "devices/dev-a/telemetry/t", "devices/dev-a/events",
                                "devices/dev-a/responses"]


def test_a_device_reads_only_its_own_commands(clients: dict[str, RecordingClient]) -> None:
    a, b, gateway = clients["dev-a"], clients["dev-b"], clients["edge-gateway"]
    # mosquitto's acl_file never refuses a subscription (the SUBACK grants it); it refuses to deliver
    granted = a.wait_subscribe("#", "devices/dev-b/commands/#", "devices/+/commands/+", "devices/dev-a/commands/#")
    assert granted == [1, 1, 1, 1]
    assert b.wait_publish("devices/dev-b/telemetry", b"b's reading")
    assert gateway.wait_publish("devices/dev-b/commands/set_rate", b'{"id": "for-b"}')
    assert gateway.wait_publish("devices/dev-a/commands/ping", b'{"id": "for-a"}')
    wait_until(lambda: a.has("devices/dev-a/commands/ping") and b.has("devices/dev-b/commands/set_rate"),
               WAIT_S)
    assert set(a.topics()) == {"devices/dev-a/commands/ping"}  # nothing of b's, not even via '#'
    assert b.topics() == ["devices/dev-b/commands/set_rate"]


def test_only_the_gateway_sends_commands(clients: dict[str, RecordingClient]) -> None:
    a, b, gateway = clients["dev-a"], clients["dev-b"], clients["edge-gateway"]
    assert a.wait_subscribe("devices/dev-a/commands/#") == [1]
    a.send("devices/dev-b/commands/set_rate", b'{"id": "forged"}')
    a.send("devices/dev-a/commands/ping", b'{"id": "to itself"}')
    b.send("devices/dev-b/commands/reboot", b'{"id": "to itself"}')
    assert gateway.wait_publish("devices/dev-b/commands/ping", b'{"id": "real"}')
    assert gateway.wait_publish("devices/dev-a/commands/ping", b'{"id": "real"}')
    wait_until(lambda: b.has("devices/dev-b/commands/ping") and a.has("devices/dev-a/commands/ping"),
               WAIT_S)
    assert [p for _, p, _ in b.messages] == [b'{"id": "real"}']
    assert [p for _, p, _ in a.messages] == [b'{"id": "real"}']


def test_retained_publishes_are_refused(deployment: Deployment, clients: dict[str, RecordingClient]) -> None:
    a, b, gateway = clients["dev-a"], clients["dev-b"], clients["edge-gateway"]
    a.send("devices/dev-a/telemetry", b"planted", retain=True)
    assert a.disconnected.wait(WAIT_S), "a retained publish must end the device's connection"
    assert b.wait_publish("devices/dev-b/telemetry", b"marker")
    wait_until(lambda: gateway.has("devices/dev-b/telemetry"), WAIT_S)
    assert gateway.topics() == ["devices/dev-b/telemetry"]  # the retained message was not delivered ...
    late = connect(deployment.port, "edge-gateway", "pw-gw")  # (replaces the gateway's connection)
    try:
        late.wait_subscribe("devices/+/telemetry")  # ... nor kept: a new subscription gets nothing retained
        assert b.wait_publish("devices/dev-b/telemetry", b"after")
        wait_until(lambda: late.has("devices/dev-b/telemetry"), WAIT_S)
        assert late.messages == [("devices/dev-b/telemetry", b"after", False)]
    finally:
        late.stop()


def test_no_device_can_take_over_another_session(deployment: Deployment, clients: dict[str, RecordingClient]) -> None:
    b, gateway = clients["dev-b"], clients["edge-gateway"]
    intruder = connect(deployment.port, "dev-a", "pw-a", client_id="dev-b")  # b's client id
    try:
        assert intruder.reason == "Success"  # mosquitto renames it to its username, dev-a
        assert gateway.wait_publish("devices/dev-b/commands/ping", b'{"id": "still b"}')
        wait_until(lambda: b.has("devices/dev-b/commands/ping"), WAIT_S)
        assert not b.disconnected.is_set()
    finally:
        intruder.stop()


def test_client_certificates(deployment: Deployment, clients: dict[str, RecordingClient]) -> None:
    gateway = clients["edge-gateway"]
    ca, port = deployment.ca, deployment.tls_port
    device = connect(port, tls=(ca.cert, ca.client("dev-c")))
    try:
        assert device.reason == "Success"
        device.send("devices/dev-a/telemetry", b"forged")  # its identity is its certificate's name
        assert device.wait_publish("devices/dev-c/telemetry", b"by certificate")
        wait_until(lambda: gateway.has("devices/dev-c/telemetry"), WAIT_S)
        assert gateway.topics() == ["devices/dev-c/telemetry"]
    finally:
        device.stop()
    foreign = deployment.foreign_ca.client("dev-c", stem="foreign")
    expired = ca.client("dev-c", expired=True, stem="expired")
    refusals = {
        "foreign CA": connect(port, tls=(ca.cert, foreign)).reason,
        "expired": connect(port, tls=(ca.cert, expired)).reason,
        "no certificate": connect(port, "dev-a", "pw-a", tls=(ca.cert, None)).reason,
    }
    assert all(outcome.startswith(REFUSED) for outcome in refusals.values()), refusals


def test_a_password_file_made_by_mosquitto_passwd_works() -> None:
    tool = require_tool("mosquitto_passwd")
    with secure_mosquitto({}, start=False) as fresh:
        passwd = fresh.passwd
        subprocess.run([tool, "-c", "-b", str(passwd), "dev-a", "pw-a"], check=True, capture_output=True, timeout=30)
        assert passwd.read_text().startswith("dev-a:$7$")  # PBKDF2-SHA512, the format the tests write too
        os.chmod(passwd, 0o644)
        fresh.broker.start()
        ok = connect(fresh.port, "dev-a", "pw-a")
        assert ok.reason == "Success"
        ok.stop()
        assert connect(fresh.port, "dev-a", "pw-b").reason == "Not authorized"


def test_removing_a_device_and_reloading_disconnects_it_at_once(deployment: Deployment,
                                                                clients: dict[str, RecordingClient]) -> None:
    a, b = clients["dev-a"], clients["dev-b"]
    passwd = deployment.passwd
    passwd.write_text("".join(line + "\n" for line in passwd.read_text().splitlines()
                              if not line.startswith("dev-a:")))
    assert deployment.broker.proc is not None
    deployment.broker.proc.send_signal(signal.SIGHUP)  # what `systemctl reload mosquitto` sends
    assert a.disconnected.wait(WAIT_S), "a removed device must be disconnected by the reload"
    assert connect(deployment.port, "dev-a", "pw-a").reason == "Not authorized"
    assert not b.disconnected.is_set()


async def test_the_gateway_ingests_through_the_shipped_broker_as_its_own_user(
        deployment: Deployment, amqtt_broker: EmbeddedBroker, tmp_path: Path) -> None:
    cloud_url = f"mqtt://127.0.0.1:{amqtt_broker.address.port}"  # amqtt as the cloud side
    local = {"mode": "external", "url": f"mqtt://127.0.0.1:{deployment.port}", "username": "edge-gateway"}
    cfg = gateway_config(tmp_path, cloud_url, protocol="3.1.1", local_broker=local)
    assert Decoder(cfg.topics, cfg.decode).subscriptions() == GATEWAY_TOPICS  # what the ACL lets it read
    svc = GatewayService(cfg, Secrets(local_password=SecretStr(PASSWORDS["edge-gateway"])))
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    device = None
    try:
        await eventually(lambda: svc.external is not None and svc.external.connection is not None)
        device = await asyncio.to_thread(connect, deployment.port, "dev-a", "pw-a")
        assert device.reason == "Success"
        ts = int(time.time() * 1000)
        device.send("devices/dev-b/telemetry", json.dumps({"ts": ts, "seq": 1, "t": 66.6}).encode())
        assert await device.publish("devices/dev-a/telemetry", json.dumps({"ts": ts, "seq": 1, "t": 21.5}).encode())
        await eventually(lambda: svc.accounting.delivered == 1, message=lambda: str(svc.snapshot()))
        assert svc.accounting.readings_in == 1  # the forged reading never reached the gateway
        assert svc.accounting.balance() == 0
    finally:
        if device is not None:
            device.stop()
        stop.set()
        await asyncio.wait_for(task, 30)


def test_a_revoked_certificate_is_refused_with_the_crl_switched_on() -> None:
    with secure_mosquitto({}, start=False, crl=True) as deployment:
        ca = deployment.ca
        revoked, kept = ca.client("dev-r"), ca.client("dev-k")
        ca.crl([revoked])
        deployment.broker.start()
        assert connect(deployment.tls_port, tls=(ca.cert, revoked)).reason.startswith(REFUSED)
        allowed = connect(deployment.tls_port, tls=(ca.cert, kept))
        assert allowed.reason == "Success"
        allowed.stop()
