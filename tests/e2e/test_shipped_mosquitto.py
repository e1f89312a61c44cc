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
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from gateway.config import Secrets
from gateway.process.decode import Decoder
from gateway.service import GatewayService
from gateway.source.broker import EmbeddedBroker
from tests.e2e.harness import gateway_config
from tests.pki import Issued
from tests.secure_mosquitto import Deployment, secure_mosquitto
from tests.support import eventually, require_tool, wait_until

PASSWORDS = {"dev-a": "pw-a", "dev-b": "pw-b", "edge-gateway": "pw-gw"}
GATEWAY_TOPICS = ["devices/+/telemetry", "devices/+/telemetry/+", "devices/+/events", "devices/+/responses"]
WAIT_S = 10.0
REFUSED = ("closed before CONNACK", "refused during connect")  # the TLS handshake failed

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    with secure_mosquitto(PASSWORDS) as running:
        yield running


@dataclass
class Client:
    """A real paho MQTT 3.1.1 client that records what happens to it (threads: paho's loop)."""

    name: str
    connack: str = "no answer"
    disconnected: threading.Event = field(default_factory=threading.Event)
    subacks: list[list[int]] = field(default_factory=list)
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    client: mqtt.Client | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def topics(self) -> list[str]:
        with self._lock:
            return [t for t, _, _ in self.messages]

    def received(self, topic: str) -> bool:
        return topic in self.topics()


def connect(port: int, username: str | None = None, password: str | None = None, *,
            client_id: str | None = None, tls: tuple[Path, Issued | None] | None = None) -> Client:
    """Connect and wait for the outcome: ``.connack`` is "Success", the broker's refusal, or why the
    connection ended before a CONNACK (a TLS handshake refused, say)."""
    client_id = client_id or username or f"c-{uuid.uuid4().hex[:8]}"  # a device's client id is its id
    rec = Client(client_id)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    rec.client = client
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None:
        cafile, issued = tls
        client.tls_set(ca_certs=str(cafile), certfile=str(issued.cert) if issued else None,
                       keyfile=str(issued.key) if issued else None, cert_reqs=ssl.CERT_REQUIRED)
    answered = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        rec.connack = str(rc)
        answered.set()

    def on_disconnect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not answered.is_set():
            rec.connack = f"closed before CONNACK ({rc})"
        rec.disconnected.set()
        answered.set()

    def on_subscribe(_c: Any, _u: Any, _mid: int, rcs: list[Any], _p: Any) -> None:
        with rec._lock:
            rec.subacks.append([rc.value for rc in rcs])

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with rec._lock:
            rec.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    client.on_subscribe, client.on_message = on_subscribe, on_message
    try:
        client.connect("127.0.0.1", port, keepalive=30)
    except (OSError, ssl.SSLError) as exc:
        rec.connack = f"refused during connect: {exc}"
        return rec
    client.loop_start()
    answered.wait(WAIT_S)  # "no answer" stays if nothing came
    if rec.connack != "Success":
        client.loop_stop()
    return rec


def subscribe(rec: Client, *filters: str) -> list[int]:
    assert rec.client is not None
    before = len(rec.subacks)
    rec.client.subscribe([(f, 1) for f in filters])
    wait_until(lambda: len(rec.subacks) > before, WAIT_S, message=f"{rec.name}: no SUBACK")
    return rec.subacks[before]


def publish(rec: Client, topic: str, payload: bytes = b"{}", *, retain: bool = False) -> None:
    assert rec.client is not None
    rec.client.publish(topic, payload, qos=1, retain=retain)


def publish_acked(rec: Client, topic: str, payload: bytes = b"{}") -> None:
    assert rec.client is not None
    info = rec.client.publish(topic, payload, qos=1)
    info.wait_for_publish(WAIT_S)
    assert info.is_published(), f"{rec.name}: no PUBACK for {topic}"


def close(*clients: Client) -> None:
    for rec in clients:
        if rec.client is not None:
            rec.client.disconnect()
            rec.client.loop_stop()


@pytest.fixture
def clients(deployment: Deployment) -> Iterator[dict[str, Client]]:
    """dev-a, dev-b and the gateway, connected with their passwords; the gateway subscribed to every
    device topic, dev-b to its own commands."""
    made = {u: connect(deployment.port, u, p) for u, p in PASSWORDS.items()}
    try:
        assert {u: c.connack for u, c in made.items()} == dict.fromkeys(PASSWORDS, "Success")
        assert subscribe(made["edge-gateway"], *GATEWAY_TOPICS) == [1] * len(GATEWAY_TOPICS)
        assert subscribe(made["dev-b"], "devices/dev-b/commands/#") == [1]
        yield made
    finally:
        close(*made.values())


def test_anonymous_unknown_and_wrong_passwords_are_refused(deployment: Deployment) -> None:
    assert connect(deployment.port).connack == "Not authorized"
    assert connect(deployment.port, "dev-a", "wrong").connack == "Not authorized"
    assert connect(deployment.port, "dev-z", "pw-a").connack == "Not authorized"
    assert connect(deployment.port, "dev-a").connack == "Not authorized"  # username, no password
    good = connect(deployment.port, "dev-a", "pw-a")
    assert good.connack == "Success"
    close(good)


def test_a_device_cannot_publish_as_another(clients: dict[str, Client]) -> None:
    a, gateway = clients["dev-a"], clients["edge-gateway"]
    for topic in ("devices/dev-b/telemetry", "devices/dev-b/telemetry/t", "devices/dev-b/events",
                  "devices/dev-b/responses", "devices/other/telemetry"):
        publish(a, topic)
    publish_acked(a, "devices/dev-a/telemetry")  # published after the forgeries, on the same connection
    publish_acked(a, "devices/dev-a/telemetry/t")
    publish_acked(a, "devices/dev-a/events")
    publish_acked(a, "devices/dev-a/responses")
    wait_until(lambda: gateway.received("devices/dev-a/responses"), WAIT_S)
    assert gateway.topics() == ["devices/dev-a/telemetry", "devices/dev-a/telemetry/t", "devices/dev-a/events",
                                "devices/dev-a/responses"]


def test_a_device_reads_only_its_own_commands(clients: dict[str, Client]) -> None:
    a, b, gateway = clients["dev-a"], clients["dev-b"], clients["edge-gateway"]
    # mosquitto's acl_file never refuses a subscription (the SUBACK grants it); it refuses to deliver
    granted = subscribe(a, "#", "devices/dev-b/commands/#", "devices/+/commands/+", "devices/dev-a/commands/#")
    assert granted == [1, 1, 1, 1]
    publish_acked(b, "devices/dev-b/telemetry", b"b's reading")
    publish_acked(gateway, "devices/dev-b/commands/set_rate", b'{"id": "for-b"}')
    publish_acked(gateway, "devices/dev-a/commands/ping", b'{"id": "for-a"}')
    wait_until(lambda: a.received("devices/dev-a/commands/ping") and b.received("devices/dev-b/commands/set_rate"),
               WAIT_S)
    assert set(a.topics()) == {"devices/dev-a/commands/ping"}  # nothing of b's, not even via '#'
    assert b.topics() == ["devices/dev-b/commands/set_rate"]


def test_only_the_gateway_sends_commands(clients: dict[str, Client]) -> None:
    a, b, gateway = clients["dev-a"], clients["dev-b"], clients["edge-gateway"]
    assert subscribe(a, "devices/dev-a/commands/#") == [1]
    publish(a, "devices/dev-b/commands/set_rate", b'{"id": "forged"}')
    publish(a, "devices/dev-a/commands/ping", b'{"id": "to itself"}')
    publish(b, "devices/dev-b/commands/reboot", b'{"id": "to itself"}')
    publish_acked(gateway, "devices/dev-b/commands/ping", b'{"id": "real"}')
    publish_acked(gateway, "devices/dev-a/commands/ping", b'{"id": "real"}')
    wait_until(lambda: b.received("devices/dev-b/commands/ping") and a.received("devices/dev-a/commands/ping"),
               WAIT_S)
    assert [p for _, p, _ in b.messages] == [b'{"id": "real"}']
    assert [p for _, p, _ in a.messages] == [b'{"id": "real"}']


def test_retained_publishes_are_refused(deployment: Deployment, clients: dict[str, Client]) -> None:
    a, b, gateway = clients["dev-a"], clients["dev-b"], clients["edge-gateway"]
    publish(a, "devices/dev-a/telemetry", b"planted", retain=True)
    assert a.disconnected.wait(WAIT_S), "a retained publish must end the device's connection"
    publish_acked(b, "devices/dev-b/telemetry", b"marker")
    wait_until(lambda: gateway.received("devices/dev-b/telemetry"), WAIT_S)
    assert gateway.topics() == ["devices/dev-b/telemetry"]  # the retained message was not delivered ...
    late = connect(deployment.port, "edge-gateway", "pw-gw")  # (replaces the gateway's connection)
    try:
        subscribe(late, "devices/+/telemetry")  # ... nor kept: a new subscription gets nothing retained
        publish_acked(b, "devices/dev-b/telemetry", b"after")
        wait_until(lambda: late.received("devices/dev-b/telemetry"), WAIT_S)
        assert late.messages == [("devices/dev-b/telemetry", b"after", False)]
    finally:
        close(late)


def test_no_device_can_take_over_another_session(deployment: Deployment, clients: dict[str, Client]) -> None:
    b, gateway = clients["dev-b"], clients["edge-gateway"]
    intruder = connect(deployment.port, "dev-a", "pw-a", client_id="dev-b")  # b's client id
    try:
        assert intruder.connack == "Success"  # mosquitto renames it to its username, dev-a
        publish_acked(gateway, "devices/dev-b/commands/ping", b'{"id": "still b"}')
        wait_until(lambda: b.received("devices/dev-b/commands/ping"), WAIT_S)
        assert not b.disconnected.is_set()
    finally:
        close(intruder)


def test_client_certificates(deployment: Deployment, clients: dict[str, Client]) -> None:
    gateway = clients["edge-gateway"]
    ca, port = deployment.ca, deployment.tls_port
    device = connect(port, tls=(ca.cert, ca.client("dev-c")))
    try:
        assert device.connack == "Success"
        publish(device, "devices/dev-a/telemetry", b"forged")  # its identity is its certificate's name
        publish_acked(device, "devices/dev-c/telemetry", b"by certificate")
        wait_until(lambda: gateway.received("devices/dev-c/telemetry"), WAIT_S)
        assert gateway.topics() == ["devices/dev-c/telemetry"]
    finally:
        close(device)
    foreign = deployment.foreign_ca.client("dev-c", stem="foreign")
    expired = ca.client("dev-c", expired=True, stem="expired")
    refusals = {
        "foreign CA": connect(port, tls=(ca.cert, foreign)).connack,
        "expired": connect(port, tls=(ca.cert, expired)).connack,
        "no certificate": connect(port, "dev-a", "pw-a", tls=(ca.cert, None)).connack,
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
        assert ok.connack == "Success"
        close(ok)
        assert connect(fresh.port, "dev-a", "pw-b").connack == "Not authorized"


def test_removing_a_device_and_reloading_disconnects_it_at_once(deployment: Deployment,
                                                                clients: dict[str, Client]) -> None:
    a, b = clients["dev-a"], clients["dev-b"]
    passwd = deployment.passwd
    passwd.write_text("".join(line + "\n" for line in passwd.read_text().splitlines()
                              if not line.startswith("dev-a:")))
    assert deployment.broker.proc is not None
    deployment.broker.proc.send_signal(signal.SIGHUP)  # what `systemctl reload mosquitto` sends
    assert a.disconnected.wait(WAIT_S), "a removed device must be disconnected by the reload"
    assert connect(deployment.port, "dev-a", "pw-a").connack == "Not authorized"
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
        assert device.connack == "Success"
        ts = int(time.time() * 1000)
        publish(device, "devices/dev-b/telemetry", json.dumps({"ts": ts, "seq": 1, "t": 66.6}).encode())
        await asyncio.to_thread(publish_acked, device, "devices/dev-a/telemetry",
                                json.dumps({"ts": ts, "seq": 1, "t": 21.5}).encode())
        await eventually(lambda: svc.accounting.delivered == 1, message=lambda: str(svc.snapshot()))
        assert svc.accounting.readings_in == 1  # the forged reading never reached the gateway
        assert svc.accounting.balance() == 0
    finally:
        if device is not None:
            close(device)
        stop.set()
        await asyncio.wait_for(task, 30)


def test_a_revoked_certificate_is_refused_with_the_crl_switched_on() -> None:
    with secure_mosquitto({}, start=False, crl=True) as deployment:
        ca = deployment.ca
        revoked, kept = ca.client("dev-r"), ca.client("dev-k")
        ca.crl([revoked])
        deployment.broker.start()
        assert connect(deployment.tls_port, tls=(ca.cert, revoked)).connack.startswith(REFUSED)
        allowed = connect(deployment.tls_port, tls=(ca.cert, kept))
        assert allowed.connack == "Success"
        close(allowed)
