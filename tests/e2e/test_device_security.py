"""Each attack a LAN client could make on the embedded broker, against a real gateway with password
auth on a LAN listener (0.0.0.0) and a real mosquitto as the cloud. Attackers are plain paho clients."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.service import GatewayService
from gateway.source.access import INTERNAL_IDENTITY
from gateway.source.passwords import read_password_file
from tests.e2e.downlink_support import CloudOperator
from tests.e2e.harness import CloudCollector, gateway_config, running_gateway
from tests.e2e.security_support import write_passwords
from tests.support import Mosquitto, RecordingClient, eventually

PASSWORDS = {"dev-a": "secret-a", "dev-b": "secret-b"}
BAD_CREDENTIALS, NOT_AUTHORIZED, IDENTIFIER_REJECTED = 0x86, 0x87, 0x85  # as paho reports the MQTT 3.1.1 codes 4, 5, 2


@pytest.fixture
async def gateway(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[GatewayService]:
    cfg = gateway_config(tmp_path, mosquitto.url, local_broker={
        "listen": "0.0.0.0:0",
        "auth": {"mode": "password", "password_file": str(write_passwords(tmp_path / "passwd", PASSWORDS)),
                 "max_denied_publishes": 3, "reload_interval_s": 0.1}})
    async with running_gateway(cfg) as svc:
        yield svc


@pytest.fixture
async def cloud(mosquitto: Mosquitto) -> AsyncIterator[CloudCollector]:
    collector = CloudCollector(mosquitto.url)
    await collector.connect()
    try:
        yield collector
    finally:
        await collector.close()


def port(svc: GatewayService) -> int:
    assert svc.embedded is not None
    return svc.embedded.address.port


def denied(svc: GatewayService, reason: str) -> int:
    return int(svc.snapshot()["security"]["denied"].get(reason, 0))


async def device(svc: GatewayService, who: str, client_id: str | None = None) -> RecordingClient:
    return await RecordingClient(port(svc), client_id or who, who, PASSWORDS[who]).start().connected()


def reading(value: float) -> bytes:
    return json.dumps({"temperature": value}).encode()


async def test_anonymous_unknown_and_wrong_password_are_refused(gateway: GatewayService) -> None:
    attempts = [RecordingClient(port(gateway), "anon"), RecordingClient(port(gateway), "dev-a", "dev-a", "wrong"),
                RecordingClient(port(gateway), "nobody", "nobody", "secret-a"),
                RecordingClient(port(gateway), "dev-a", "dev-a")]
    for attempt in attempts:
        attempt.start()
    for attempt in attempts:
        await attempt.refused()
        assert attempt.connack == BAD_CREDENTIALS
        attempt.stop()
    assert denied(gateway, "auth_failed") == 2
    assert denied(gateway, "no_credentials") == 2
    ok = await device(gateway, "dev-a")
    ok.stop()


async def test_a_device_cannot_publish_as_another(gateway: GatewayService, cloud: CloudCollector) -> None:
    a = await device(gateway, "dev-a")
    await a.publish("devices/dev-b/telemetry", reading(66.0))
    await a.publish("devices/dev-b/telemetry/temperature", b"67")
    await a.publish("devices/dev-a/telemetry", reading(21.5))
    await eventually(lambda: any(r.device == "dev-a" for r in cloud.data.readings()), message="own reading")
    assert {r.device for r in cloud.data.readings()} == {"dev-a"}
    assert denied(gateway, "acl_publish") == 2
    acc = gateway.accounting
    assert acc.messages_in == 1 and acc.balance() == 0  # a denied publish never becomes a reading
    a.stop()


async def test_a_device_cannot_subscribe_to_everything_or_others_commands(gateway: GatewayService) -> None:
    a = await device(gateway, "dev-a")
    for topic in ("#", "devices/#", "devices/+/commands/#", "devices/dev-b/commands/ping", "devices/dev-a/telemetry"):
        assert await a.subscribe(topic) == [0x80], topic
    assert await a.subscribe("devices/dev-a/commands/#") == [1]
    assert await a.subscribe("devices/dev-a/commands/ping") == [1]
    assert denied(gateway, "acl_subscribe") == 5
    a.stop()


async def test_only_the_gateway_commands_devices(gateway: GatewayService, mosquitto: Mosquitto) -> None:
    b = await device(gateway, "dev-b")
    assert await b.subscribe("devices/dev-b/commands/#") == [1]
    a = await device(gateway, "dev-a")
    await a.publish("devices/dev-b/commands/set_rate", json.dumps({"id": "evil", "args": {"rate_hz": 500}}).encode())
    op = await CloudOperator.connect(mosquitto.url)
    try:
        await op.until_subscribed()
        await op.send("dev-b/ping", {"id": "real"})
        await eventually(lambda: any(t == "devices/dev-b/commands/ping" for t in b.topics()), message="real command")
    finally:
        await op.close()
    assert "devices/dev-b/commands/set_rate" not in b.topics()
    assert denied(gateway, "acl_publish") == 1
    a.stop()
    b.stop()


async def test_retained_publishes_are_refused_and_never_delivered(gateway: GatewayService,
                                                                  cloud: CloudCollector) -> None:
    a = await device(gateway, "dev-a")
    await a.publish("devices/dev-a/telemetry", reading(99.0), retain=True)
    await a.publish("devices/dev-a/telemetry", reading(20.0))
    await eventually(lambda: bool(cloud.data.readings()), message="the unretained reading")
    assert [r.value for r in cloud.data.readings()] == [20.0]
    assert denied(gateway, "retain_denied") == 1
    b = await device(gateway, "dev-b")
    assert await b.subscribe("devices/dev-b/commands/#") == [1]
    assert gateway.embedded is not None
    inner = await RecordingClient(port(gateway), "spy", *gateway.embedded.internal_credentials).start().connected()
    assert await inner.subscribe("#") == [1]
    await a.publish("devices/dev-a/events", b'{"e": 1}')
    await eventually(lambda: "devices/dev-a/events" in inner.topics(), message="the gateway's own client sees events")
    assert not any(retained for _t, _p, retained in inner.messages + b.messages)
    for c in (a, b, inner):
        c.stop()


async def test_repeated_denied_publishes_disconnect_the_client(gateway: GatewayService) -> None:
    a = await device(gateway, "dev-a")
    for n in range(3):
        a.c.publish("devices/dev-b/telemetry", reading(float(n)), qos=1)
    await eventually(lambda: a.disconnects > 0, message="still connected after 3 denied publishes")
    assert denied(gateway, "too_many_denials") == 1


async def test_answers_only_from_the_device_the_command_was_sent_to(gateway: GatewayService,
                                                                    mosquitto: Mosquitto) -> None:
    a, b = await device(gateway, "dev-a"), await device(gateway, "dev-b")
    assert await b.subscribe("devices/dev-b/commands/#") == [1]
    op = await CloudOperator.connect(mosquitto.url)
    try:
        await op.until_subscribed()
        await op.send("dev-b/ping", {"id": "c-1"})
        await eventually(lambda: "devices/dev-b/commands/ping" in b.topics(), message="command at dev-b")
        forged = json.dumps({"id": "c-1", "status": "ok", "result": "forged"}).encode()
        await a.publish("devices/dev-b/responses", forged)
        await a.publish("devices/dev-a/responses", forged)
        await eventually(lambda: denied(gateway, "forged_response") == 1, message="forged answer counted")
        assert denied(gateway, "acl_publish") == 1
        await b.publish("devices/dev-b/responses", json.dumps({"id": "c-1", "status": "ok", "result": "pong"}).encode())
        answer = await op.answer("c-1")
        assert answer["device"] == "dev-b" and answer["result"] == "pong" and answer["source"] == "device"
        assert len(op.answers("c-1")) == 1
    finally:
        await op.close()
    a.stop()
    b.stop()


async def test_nobody_takes_over_another_identity_but_a_reconnect_replaces_the_old_connection(
        gateway: GatewayService, mosquitto: Mosquitto) -> None:
    b = await device(gateway, "dev-b")
    assert await b.subscribe("devices/dev-b/commands/#") == [1]
    thief = RecordingClient(port(gateway), "dev-b", "dev-a", "secret-a").start()
    await thief.refused()
    assert thief.connack == IDENTIFIER_REJECTED
    assert denied(gateway, "client_id_mismatch") == 1
    op = await CloudOperator.connect(mosquitto.url)
    try:
        await op.until_subscribed()
        await op.send("dev-b/ping", {"id": "after-theft"})
        await eventually(lambda: "devices/dev-b/commands/ping" in b.topics(), message="dev-b kept its session")
        b2 = await device(gateway, "dev-b")  # the same device again (say, after a reboot)
        await eventually(lambda: b.disconnects > 0, message="the old connection was not closed")
        assert await b2.subscribe("devices/dev-b/commands/#") == [1]
        await op.send("dev-b/ping", {"id": "to-new"})
        await eventually(lambda: "devices/dev-b/commands/ping" in b2.topics(), message="command at the new connection")
    finally:
        await op.close()
    b.stop()
    b2.stop()


async def test_a_removed_device_is_disconnected_and_cannot_reconnect(gateway: GatewayService,
                                                                     tmp_path: Path) -> None:
    a, b = await device(gateway, "dev-a"), await device(gateway, "dev-b")
    res = CliRunner().invoke(main, ["devices", "--password-file", str(tmp_path / "passwd"),
                                    "--pki-dir", str(tmp_path / "pki"), "remove", "dev-a"])
    assert res.exit_code == 0, res.output  # picked up by the file poll (0.1 s here)
    await eventually(lambda: a.disconnects > 0, message="dev-a still connected after removal")
    again = RecordingClient(port(gateway), "dev-a", "dev-a", PASSWORDS["dev-a"]).start()
    await again.refused()
    assert again.connack == BAD_CREDENTIALS
    assert b.disconnects == 0 and denied(gateway, "revoked") == 1
    b.stop()


async def test_the_internal_identity_cannot_be_used_by_a_device(gateway: GatewayService, tmp_path: Path) -> None:
    for password in ("", "secret-a", "guess"):
        attempt = RecordingClient(port(gateway), "x", INTERNAL_IDENTITY, password).start()
        await attempt.refused()
        attempt.stop()
    assert denied(gateway, "auth_failed") == 3
    (tmp_path / "evil").write_text(f"{INTERNAL_IDENTITY}:$7$101$AAAA$AAAA\n")
    with pytest.raises(Exception, match="device id"):
        read_password_file(tmp_path / "evil")


async def test_a_will_on_another_devices_topic_or_retained_is_refused(gateway: GatewayService) -> None:
    for will in (("devices/dev-b/events", False), ("devices/dev-a/events", True)):
        attempt = RecordingClient(port(gateway), "dev-a", "dev-a", PASSWORDS["dev-a"], will=will).start()
        await attempt.refused()
        assert attempt.connack == NOT_AUTHORIZED
    assert denied(gateway, "acl_will") == 1 and denied(gateway, "retain_denied") == 1
    ok = await RecordingClient(port(gateway), "dev-a", "dev-a", PASSWORDS["dev-a"], will=("devices/dev-a/events", False)
                      ).start().connected()
    ok.stop()


async def test_a_burst_then_disconnect_loses_nothing(gateway: GatewayService) -> None:
    """amqtt acknowledges a QoS 1 PUBLISH when it queues it; what is queued at the DISCONNECT is still
    processed (checked, counted, ingested), not dropped with the session."""
    a = await device(gateway, "dev-a")
    a.disconnect_after_acks = 2000
    for n in range(2000):
        a.c.publish("devices/dev-a/telemetry", reading(float(n % 50)), qos=1)
    await eventually(lambda: a.disconnects > 0, message="disconnect")
    a.c.loop_stop()
    await eventually(lambda: gateway.accounting.readings_in == 2000,
                     message=lambda: f"{gateway.accounting.readings_in} of 2000 readings")


async def test_simultaneous_connections_of_one_client_id_leave_exactly_one(gateway: GatewayService) -> None:
    clients = [RecordingClient(port(gateway), "dev-a", "dev-a", PASSWORDS["dev-a"]).start() for _ in range(4)]

    def live() -> list[RecordingClient]:
        return [c for c in clients if c.connack == 0 and c.disconnects == 0]

    await eventually(lambda: all(c.connack is not None or c.disconnects for c in clients) and len(live()) == 1,
                     message=lambda: f"connacks {[c.connack for c in clients]}, "
                                     f"disconnects {[c.disconnects for c in clients]}")
    assert await live()[0].subscribe("devices/dev-a/commands/#") == [1]
    for c in clients:
        c.stop()
