"""The paho adapter against real brokers: mosquitto (MQTT 5 and 3.1.1) and the embedded amqtt (3.1.1)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bridge.mqtt.backoff import DecorrelatedJitter
from bridge.mqtt.connect import connect_with_backoff
from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.errors import (
    ConnectFailed,
    ConnectionLost,
    ConnectRefused,
    PermanentBridgeError,
    PublishRejected,
    UplinkBusy,
    UplinkStopped,
)
from bridge.mqtt.types import ClientSettings, Message, MessageHandler, TlsSettings, Will
from bridge.mqtt.urls import BrokerUrl
from gateway.source.broker import EmbeddedBroker
from tests.support import Mosquitto, eventually, free_port, require_tool

pytestmark = pytest.mark.timeout(30)


def _settings(client_id: str, protocol: str = "5", **kw: object) -> ClientSettings:
    kw.setdefault("connect_timeout_s", 5.0)
    return ClientSettings(client_id=client_id, protocol=protocol, **kw)  # type: ignore[arg-type]


class Observer:
    """A second, independent session that records what it receives."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.threads: set[int] = set()
        self.conn: MqttConnection | None = None

    def __call__(self, message: Message) -> None:
        self.threads.add(threading.get_ident())
        self.messages.append(message)

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [m.payload for m in self.messages if topic is None or m.topic == topic]


@contextlib.asynccontextmanager
async def observing(url: str, filters: list[tuple[str, int]], protocol: str = "5") -> AsyncIterator[Observer]:
    observer = Observer()
    observer.conn = await MqttConnection.open(url, _settings(f"obs-{random.getrandbits(32):x}", protocol),
                                              on_message=observer)
    try:
        await observer.conn.subscribe(filters)
        yield observer
    finally:
        await observer.conn.close()


@contextlib.asynccontextmanager
async def connected(
    url: str | BrokerUrl, settings: ClientSettings, on_message: MessageHandler | None = None,
) -> AsyncIterator[MqttConnection]:
    conn = await MqttConnection.open(url, settings, on_message=on_message)
    try:
        yield conn
    finally:
        await conn.close()


@contextlib.contextmanager
def frozen(broker: Mosquitto) -> Iterator[None]:
    """SIGSTOP the broker: TCP still accepts our bytes, but nothing is acknowledged."""
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if broker.proc is not None and broker.proc.poll() is None:
            os.kill(broker.proc.pid, signal.SIGCONT)


@pytest.fixture
def conf_dir() -> Iterator[Path]:
    """A directory the (privilege-dropping) mosquitto process can read, unlike pytest's tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="uplink-conf-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _readable_file(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o644)
    return path


@pytest.fixture
def acl_mosquitto(conf_dir: Path) -> Iterator[Mosquitto]:
    """mosquitto whose ACL lets anonymous clients use ``allowed/#`` only."""
    acl = _readable_file(conf_dir / "acl", "topic readwrite allowed/#\n")
    broker = Mosquitto(extra_conf=f"acl_file {acl}")
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


BROKERS = [("mosquitto", "5"), ("mosquitto", "3.1.1"), ("amqtt", "3.1.1")]


@pytest.fixture(params=BROKERS, ids=[f"{b}-mqtt{p}" for b, p in BROKERS])
def broker(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(url, protocol) for each broker/protocol pair we support."""
    name, protocol = request.param
    if name == "amqtt":
        server: EmbeddedBroker = request.getfixturevalue("amqtt_broker")
        return f"mqtt://{server.address.host}:{server.address.port}", protocol
    mosq: Mosquitto = request.getfixturevalue("mosquitto")
    return mosq.url, protocol


# ---------------------------------------------------------------------------------------- publish
async def test_qos1_publish_resolves_after_puback_and_is_delivered(broker: tuple[str, str]) -> None:
    url, protocol = broker
    pub = _settings("p", protocol)
    async with observing(url, [("up/#", 1)], protocol) as obs, connected(url, pub) as conn:
        assert conn.info.protocol == protocol
        before = conn.last_activity
        futures = [conn.publish("up/data", f"m{i}".encode(), qos=1) for i in range(10)]
        assert conn.pending_count > 0
        await asyncio.gather(*futures)
        assert conn.pending_count == 0
        assert conn.last_activity > before
        await eventually(lambda: len(obs.payloads("up/data")) == 10)
        assert obs.payloads("up/data") == [f"m{i}".encode() for i in range(10)]


async def test_qos0_publish_resolves_once_written(broker: tuple[str, str]) -> None:
    url, protocol = broker
    pub = _settings("p0", protocol)
    async with observing(url, [("q0/#", 0)], protocol) as obs, connected(url, pub) as conn:
        await asyncio.gather(*(conn.publish("q0/t", b"%d" % i, qos=0) for i in range(5)))
        assert conn.pending_count == 0
        await eventually(lambda: len(obs.messages) == 5)
        assert all(m.qos == 0 for m in obs.messages)


async def test_messages_arrive_in_order_on_the_event_loop_thread(broker: tuple[str, str]) -> None:
    url, protocol = broker
    pub = _settings("o", protocol)
    async with observing(url, [("o/#", 1)], protocol) as obs, connected(url, pub) as conn:
        for start in range(0, 200, 20):  # stay within the inflight window
            await asyncio.gather(*(conn.publish("o/t", b"%d" % i) for i in range(start, start + 20)))
        await eventually(lambda: len(obs.messages) == 200)
        assert obs.payloads() == [b"%d" % i for i in range(200)]
        assert obs.threads == {threading.get_ident()}
        assert {m.qos for m in obs.messages} == {1}


async def test_publish_beyond_the_inflight_window_is_refused(mosquitto: Mosquitto) -> None:
    async with connected(mosquitto.url, _settings("win", max_inflight=5)) as conn:
        assert conn.info.inflight_window == 5
        with frozen(mosquitto):
            futures = [conn.publish("w/t", b"x") for _ in range(5)]
            with pytest.raises(UplinkBusy):
                conn.publish("w/t", b"x")
            conn.publish("w/t", b"qos0 is not limited", qos=0)
        await asyncio.gather(*futures)
        await conn.publish("w/t", b"room again")


async def test_receive_maximum_from_connack_limits_the_window() -> None:
    broker = Mosquitto(extra_conf="max_inflight_messages 3")
    broker.start()
    try:
        async with connected(broker.url, _settings("rmax", max_inflight=20)) as conn:
            assert conn.info.receive_maximum == 3
            assert conn.info.inflight_window == 3
            with frozen(broker):
                futures = [conn.publish("r/t", b"x") for _ in range(3)]
                with pytest.raises(UplinkBusy):
                    conn.publish("r/t", b"x")
            await asyncio.gather(*futures)
    finally:
        broker.cleanup()


async def test_mqtt5_publish_properties_reach_the_subscriber(mosquitto: Mosquitto) -> None:
    url = mosquitto.url
    async with observing(url, [("p/#", 1)]) as obs, connected(url, _settings("props")) as conn:
        await conn.publish("p/t", b"{}", properties={
            "user_properties": [("gw", "g1"), ("seq", "7")], "message_expiry_interval": 60,
            "content_type": "application/json",
        })
        await eventually(lambda: len(obs.messages) == 1)
        props = obs.messages[0].properties
        assert props["user_properties"] == [("gw", "g1"), ("seq", "7")]
        assert props["content_type"] == "application/json"
        assert 0 < props["message_expiry_interval"] <= 60


async def test_puback_failure_reason_code_rejects_the_publish(acl_mosquitto: Mosquitto) -> None:
    """mosquitto answers an MQTT 5 QoS 1 publish denied by its ACL with PUBACK 0x87.

    (mosquitto 2.0.11 then also drops the connection; an allowed publish with no subscriber gets
    PUBACK 0x10 "No matching subscribers", which is a success code.)
    """
    async with connected(acl_mosquitto.url, _settings("acl")) as conn:
        await conn.publish("allowed/t", b"ok")
        with pytest.raises(PublishRejected) as info:
            await conn.publish("denied/t", b"no")
        assert info.value.reason_code == 0x87
        assert info.value.topic == "denied/t"
        assert "Not authorized" in str(info.value)


# ---------------------------------------------------------------------------------------- link loss
async def test_broker_killed_fails_pending_publishes(mosquitto: Mosquitto) -> None:
    conn = await MqttConnection.open(mosquitto.url, _settings("kill"))
    with frozen(mosquitto):
        futures = [conn.publish("k/t", b"x") for _ in range(10)]
        assert conn.pending_count == 10
        mosquitto.kill()
    reason = await asyncio.wait_for(conn.wait_closed(), 10)
    assert reason == "connection lost"
    assert conn.closed
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, ConnectionLost) for r in results), results
    assert conn.pending_count == 0
    with pytest.raises(ConnectionLost):
        conn.publish("k/t", b"after")
    await conn.close()  # still fine after the link died


async def test_close_fails_pending_and_later_publishes_immediately(mosquitto: Mosquitto) -> None:
    conn = await MqttConnection.open(mosquitto.url, _settings("closer"))
    with frozen(mosquitto):
        pending = conn.publish("c/t", b"x")
        await conn.close()
    assert conn.closed
    assert await conn.wait_closed() == "closed by client"
    # Either the broker acked it just before SIGSTOP took effect, or it failed: never left hanging.
    assert pending.done()
    if pending.exception() is not None:
        assert isinstance(pending.exception(), ConnectionLost)
    with pytest.raises(ConnectionLost):
        conn.publish("c/t", b"late")
    with pytest.raises(ConnectionLost):
        await conn.subscribe([("c/#", 1)])
    await conn.close()  # idempotent


async def test_keepalive_pings_count_as_activity(mosquitto: Mosquitto) -> None:
    async with connected(mosquitto.url, _settings("idle", keepalive_s=1)) as conn:
        start = conn.last_activity
        await eventually(lambda: conn.last_activity > start + 0.5, timeout=5)


async def test_a_silent_broker_is_dropped_by_keepalive(mosquitto: Mosquitto) -> None:
    """A zombie link (TCP up, broker mute) ends after about 2 x keepalive, failing what is pending."""
    conn = await MqttConnection.open(mosquitto.url, _settings("zombie", keepalive_s=1))
    with frozen(mosquitto):
        pending = conn.publish("z/t", b"x")
        assert await asyncio.wait_for(conn.wait_closed(), 10) == "Keep alive timeout"
    with pytest.raises(ConnectionLost):
        await pending
    await conn.close()


# ---------------------------------------------------------------------------------------- connecting
async def test_connect_to_a_closed_port_fails_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(ConnectFailed, match="cannot connect"):
        await MqttConnection.open(f"mqtt://127.0.0.1:{free_port()}", _settings("nobody"))
    assert time.monotonic() - started < 3


async def test_amqtt_refuses_mqtt5(amqtt_broker: EmbeddedBroker) -> None:
    address = amqtt_broker.address
    with pytest.raises(ConnectRefused) as info:
        await MqttConnection.open(f"mqtt://{address.host}:{address.port}", _settings("v5", "5"))
    assert info.value.reason_code == 0x84


async def test_credentials_from_the_url_are_used(conf_dir: Path) -> None:
    passwords = _readable_file(conf_dir / "passwd", "gw:secret\n")
    broker = Mosquitto(extra_conf=f"allow_anonymous false\npassword_file {passwords}")
    # mosquitto reads plain-text lines only after hashing; use its own tool when available.
    require_tool("mosquitto_passwd")
    proc = await asyncio.create_subprocess_exec("mosquitto_passwd", "-U", str(passwords))
    assert await proc.wait() == 0
    os.chmod(passwords, 0o644)
    broker.start()
    try:
        host = f"{broker.host}:{broker.port}"
        async with connected(f"mqtt://gw:secret@{host}", _settings("authed")) as conn:
            await conn.publish("a/t", b"x")
        with pytest.raises(ConnectRefused) as info:
            await MqttConnection.open(f"mqtt://gw:wrong@{host}", _settings("bad"))
        assert info.value.reason_code in (0x86, 0x87)
        with pytest.raises(ConnectRefused):
            await MqttConnection.open(f"mqtt://gw:wrong@{host}", _settings("bad3", "3.1.1"))
    finally:
        broker.cleanup()


async def test_connect_with_backoff_skips_a_dead_url(mosquitto: Mosquitto) -> None:
    dead = f"mqtt://127.0.0.1:{free_port()}"
    failures: list[tuple[BrokerUrl, BaseException, float]] = []
    conn = await connect_with_backoff(
        [dead, mosquitto.url], _settings("rr"), DecorrelatedJitter(0.01, 0.05, random.Random(1)),
        on_attempt_failed=lambda url, err, delay: failures.append((url, err, delay)),
    )
    try:
        assert conn.info.url.port == mosquitto.port
        assert len(failures) == 1
        assert str(failures[0][0]) == dead
        assert isinstance(failures[0][1], ConnectFailed)
        assert 0.01 <= failures[0][2] <= 0.05
        await conn.publish("rr/t", b"x")
    finally:
        await conn.close()


async def test_connect_with_backoff_waits_for_a_broker_that_starts_later(mosquitto: Mosquitto) -> None:
    mosquitto.stop()
    first_failure = asyncio.Event()
    failures: list[BaseException] = []

    def failed(url: BrokerUrl, err: BaseException, delay: float) -> None:
        failures.append(err)
        first_failure.set()

    backoff = DecorrelatedJitter(0.05, 0.2, random.Random(7))
    connecting = asyncio.create_task(connect_with_backoff(
        [mosquitto.url], _settings("late"), backoff, on_attempt_failed=failed))
    await asyncio.wait_for(first_failure.wait(), 10)
    await asyncio.to_thread(mosquitto.start)
    conn = await asyncio.wait_for(connecting, 10)
    try:
        assert failures
        assert all(isinstance(f, ConnectFailed) for f in failures)
        await conn.publish("late/t", b"x")
        assert 0.05 <= backoff.next_delay() <= 0.15  # reset after the success
    finally:
        await conn.close()


async def test_connect_with_backoff_stops_when_asked() -> None:
    stop = asyncio.Event()
    attempts: list[BrokerUrl] = []

    def failed(url: BrokerUrl, err: BaseException, delay: float) -> None:
        attempts.append(url)
        stop.set()

    with pytest.raises(UplinkStopped):
        await asyncio.wait_for(connect_with_backoff(
            [f"mqtt://127.0.0.1:{free_port()}"], _settings("stopper"), DecorrelatedJitter(30.0, 60.0),
            on_attempt_failed=failed, stop=stop), 5)
    assert len(attempts) == 1


# ---------------------------------------------------------------------------------------- last will
async def test_abort_makes_the_broker_publish_the_retained_will(mosquitto: Mosquitto) -> None:
    will = Will("x/status", b"offline", qos=1, retain=True)
    conn = await MqttConnection.open(mosquitto.url, _settings("lwt", will=will))
    await conn.publish("x/status", b"online", retain=True)
    conn.abort()
    assert await asyncio.wait_for(conn.wait_closed(), 5) == "aborted by client"
    with pytest.raises(ConnectionLost):
        conn.publish("x/t", b"x")
    async with observing(mosquitto.url, [("x/status", 1)]) as obs:
        await eventually(lambda: obs.payloads("x/status") == [b"offline"])
        assert obs.messages[0].retain
    await conn.close()


async def test_clean_close_does_not_send_the_will(mosquitto: Mosquitto) -> None:
    will = Will("y/status", b"offline", qos=1, retain=True)
    conn = await MqttConnection.open(mosquitto.url, _settings("lwt-clean", "3.1.1", will=will))
    await conn.publish("y/status", b"online", retain=True)
    await conn.close()
    async with observing(mosquitto.url, [("y/status", 1)]) as obs:
        await eventually(lambda: len(obs.messages) >= 1)
        assert obs.payloads("y/status") == [b"online"]


# ---------------------------------------------------------------------------------------- manual ack
async def test_manual_ack_defers_the_puback(mosquitto: Mosquitto) -> None:
    """Without ack() the broker redelivers to the resumed session; after ack() it does not."""
    received: list[Message] = []
    settings = _settings("sink", clean_start=False, session_expiry_s=60, manual_ack=True)
    sink = await MqttConnection.open(mosquitto.url, settings, on_message=received.append)
    await sink.subscribe([("ma/#", 1)])
    async with connected(mosquitto.url, _settings("ma-pub")) as pub:
        await pub.publish("ma/t", b"first")
        await eventually(lambda: len(received) == 1)
        sink.abort()
        await sink.wait_closed()
        received.clear()
        sink = await MqttConnection.open(mosquitto.url, settings, on_message=received.append)
        assert sink.info.session_present
        await eventually(lambda: [m.payload for m in received] == [b"first"])
        sink.ack(received[0])
        await pub.publish("ma/t", b"second")
        await eventually(lambda: len(received) == 2)
        sink.ack(received[1])
        await sink.close()
        received.clear()
        sink = await MqttConnection.open(mosquitto.url, settings, on_message=received.append)
        await pub.publish("ma/t", b"third")
        await eventually(lambda: len(received) >= 1)
        assert [m.payload for m in received] == [b"third"]
        sink.ack(received[0])
        await sink.close()


# ---------------------------------------------------------------------------------------- timeouts
def _paho_thread_alive(client_id: str) -> bool:
    return any(t.name == f"paho-mqtt-client-{client_id}" for t in threading.enumerate())


async def test_missing_connack_times_out_and_cleans_up(mosquitto: Mosquitto) -> None:
    with frozen(mosquitto):  # the kernel accepts the TCP connection; nobody answers CONNECT
        started = time.monotonic()
        with pytest.raises(ConnectFailed, match="no CONNACK"):
            await MqttConnection.open(mosquitto.url, _settings("mute", connect_timeout_s=0.5))
        assert time.monotonic() - started < 3
        await eventually(lambda: not _paho_thread_alive("mute"), timeout=5)


async def test_cancelled_open_leaves_no_thread_behind(mosquitto: Mosquitto) -> None:
    with frozen(mosquitto):
        opening = asyncio.create_task(MqttConnection.open(mosquitto.url, _settings("cancelled")))
        await eventually(lambda: _paho_thread_alive("cancelled"), timeout=5)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        await eventually(lambda: not _paho_thread_alive("cancelled"), timeout=5)


async def test_close_stops_the_network_thread(mosquitto: Mosquitto) -> None:
    conn = await MqttConnection.open(mosquitto.url, _settings("threaded"))
    assert _paho_thread_alive("threaded")
    await conn.close()
    assert not _paho_thread_alive("threaded")


# ---------------------------------------------------------------------------------------- TLS
def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture
def tls_mosquitto(conf_dir: Path) -> Iterator[tuple[Mosquitto, Path]]:
    """mosquitto with a TLS listener whose certificate (for IP 127.0.0.1) is signed by ``ca.crt``."""
    require_tool("openssl")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    d = conf_dir
    _openssl("req", "-x509", *ec, "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt", "-days", "2",
             "-subj", "/CN=uplink-test-ca")
    _openssl("req", *ec, "-keyout", f"{d}/server.key", "-out", f"{d}/server.csr", "-subj", "/CN=127.0.0.1")
    _readable_file(d / "san.ext", "subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.crt", "-CAkey", f"{d}/ca.key",
             "-CAcreateserial", "-out", f"{d}/server.crt", "-days", "2", "-extfile", f"{d}/san.ext")
    for name in ("ca.crt", "server.crt", "server.key"):
        os.chmod(d / name, 0o644)
    broker = Mosquitto(extra_conf=f"cafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key")
    broker.start()
    try:
        yield broker, d / "ca.crt"
    finally:
        broker.cleanup()


async def test_tls_connects_and_verifies_the_broker(tls_mosquitto: tuple[Mosquitto, Path]) -> None:
    broker, ca = tls_mosquitto
    url = f"mqtts://127.0.0.1:{broker.port}"
    async with connected(url, _settings("tls", tls=TlsSettings(ca_file=str(ca)))) as conn:
        await conn.publish("tls/t", b"secret")
    with pytest.raises(ConnectFailed, match="certificate verification failed"):
        await MqttConnection.open(url, _settings("tls-untrusted"))  # system CAs only
    with pytest.raises(ConnectFailed, match="certificate verification failed"):  # name mismatch
        await MqttConnection.open(f"mqtts://localhost:{broker.port}", _settings("tls-name",
                                  tls=TlsSettings(ca_file=str(ca))))
    async with connected(f"mqtts://localhost:{broker.port}",
                         _settings("tls-lab", tls=TlsSettings(insecure=True))) as conn:
        await conn.publish("tls/t", b"lab")


async def test_unreadable_tls_file_is_a_permanent_error(mosquitto: Mosquitto) -> None:
    with pytest.raises(PermanentBridgeError, match="invalid client settings"):
        await MqttConnection.open(mosquitto.url, _settings("bad", tls=TlsSettings(ca_file="/nonexistent/ca")))
