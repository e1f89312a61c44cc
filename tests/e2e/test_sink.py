"""The cloud sink against real brokers: mosquitto (MQTT 5, shared subscriptions) and amqtt (3.1.1)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from bridge.cloud.errors import SinkStoreError
from bridge.cloud.report import build_report
from bridge.cloud.sink import Protocol, Sink, run_sink
from bridge.cloud.sink_port import SinkStorePort
from bridge.cloud.sink_store import SinkStore
from bridge.cloud.sink_writes import BatchWrite, Outcome, Write
from bridge.mqtt.backoff import DecorrelatedJitter
from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.errors import PermanentBridgeError
from bridge.mqtt.types import ClientSettings
from bridge.protocol.codec import encode_batch
from bridge.protocol.model import Reading
from bridge.protocol.records import json_bytes
from bridge.protocol.topics import CloudTopics
from gateway.source.broker import EmbeddedBroker
from tests.e2e.exactly_once import serving
from tests.e2e.fake_broker import read_packet
from tests.support import Mosquitto, eventually

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000_000


def envelope(gateway: str, seq: int, n: int = 5, *, replay: bool = False) -> bytes:
    ts = T0 + seq * 100
    readings = [Reading(f"dev-{i % 2}", "temp", ts + i, 20.0 + i / 10, seq * 100 + i) for i in range(n)]
    return encode_batch(gateway, seq, readings, stream="s1", created_ms=T0 + seq, replay=replay)


def control(gateway: str, seq: int, kind: str) -> bytes:
    shapes: dict[str, dict[str, Any]] = {
        "alert": {"device": "dev-0", "metric": "temp", "level": "max", "state": "raised", "value": 90.5,
                  "threshold": 80.0, "ts_ms": T0, "rule": "hot"},
        "event": {"device": "dev-1", "ts_ms": T0, "event": {"door": "open"}},
        "response": {"device": "dev-1", "command": "ping", "id": "c-1", "status": "ok", "result": None,
                     "source": "device", "rtt_ms": 2.0},
    }
    return json_bytes({"kind": kind, "gw": gateway, "seq": seq, **shapes[kind]})


class FlakyStore(SinkStore):
    """A real store whose first ``failures`` groups with a write of class ``kind`` (a batch by
    default) fail like a full disk would."""

    def __init__(self, path: Path, failures: int, kind: type[Write] = BatchWrite) -> None:
        super().__init__(path, durable=False)
        self.failures = failures
        self.kind = kind

    def store_group(self, writes: Sequence[Write]) -> list[Outcome]:
        if self.failures > 0 and any(isinstance(w, self.kind) for w in writes):
            self.failures -= 1
            raise SinkStoreError("sink database: write: database or disk is full")
        return super().store_group(writes)


@contextlib.asynccontextmanager
async def running_sink(url: str, store: SinkStorePort, **kw: Any) -> AsyncIterator[Sink]:
    async with serving(Sink(store, [url], backoff=DecorrelatedJitter(0.05, 0.5), connect_timeout_s=5.0, **kw),
                       ready_s=10) as sink:
        yield sink


@contextlib.asynccontextmanager
async def publisher(url: str, protocol: Protocol) -> AsyncIterator[MqttConnection]:
    client_id = f"pub-{random.getrandbits(32):x}"
    settings = ClientSettings(client_id=client_id, protocol=protocol, max_inflight=100)
    conn = await MqttConnection.open(url, settings)
    try:
        yield conn
    finally:
        await conn.close()


async def publish_all(conn: MqttConnection, messages: list[tuple[str, bytes]]) -> None:
    await asyncio.gather(*(conn.publish(topic, payload, qos=1) for topic, payload in messages))


async def exercise(url: str, protocol: Protocol, tmp_path: Path) -> None:
    """Batches with a duplicate and a gap, control records, status, garbage: then fill the gap."""
    gw = CloudTopics("gw-1")
    db = tmp_path / "sink.sqlite"
    with SinkStore(db, durable=False) as store:
        async with publisher(url, protocol) as pub, running_sink(url, store, protocol=protocol) as sink:
            await pub.publish(gw.status, b"online", qos=1, retain=True)
            await publish_all(pub, [
                (gw.telemetry, envelope("gw-1", 1)),
                (gw.telemetry, envelope("gw-1", 2)),
                (gw.telemetry, envelope("gw-1", 2)),  # duplicate publish
                (gw.telemetry, envelope("gw-1", 3)),
                (gw.telemetry, envelope("gw-1", 5)),  # 4 skipped: a gap
                (gw.telemetry, b"\x01\x02not zlib"),  # malformed
                (gw.telemetry, envelope("other", 9)),  # gateway in payload differs from topic
                (gw.alerts, control("gw-1", 1, "alert")),
                (gw.events, control("gw-1", 2, "event")),
                (gw.responses, control("gw-1", 3, "response")),
                (gw.alerts, b"{not json"),
            ])
            c = sink.counters
            await eventually(lambda: c.handled == 12, message=lambda: f"{c}")
            assert (c.batches, c.readings, c.duplicates, c.invalid) == (4, 20, 1, 3)
            assert (c.alerts, c.events, c.responses, c.status) == (1, 1, 1, 1)
            assert sink.gateway_state == {"gw-1": "online"}

            report = build_report(db)["gateways"]["gw-1"]
            assert report["gaps"]["telemetry"]["first"] == [[4, 4]]
            assert report["duplicates"]["telemetry"] == 1
            assert sum(report["invalid"].values()) == 3
            assert report["status"]["state"] == "online"

            # The sink kept running after the garbage: a late replayed batch fills the gap.
            await pub.publish(gw.telemetry, envelope("gw-1", 4, replay=True), qos=1)
            await eventually(lambda: c.batches == 5, message=lambda: f"{c}")
            report = build_report(db)["gateways"]["gw-1"]
            assert report["gaps"]["telemetry"]["missing"] == 0
            assert (report["batches"], report["readings"], report["replayed_batches"]) == (5, 25, 1)
            assert report["alerts"]["raised"] == 1


async def test_sink_on_mosquitto_mqtt5(mosquitto: Mosquitto, tmp_path: Path) -> None:
    await exercise(mosquitto.url, "5", tmp_path)


async def test_sink_on_amqtt_mqtt311(amqtt_broker: EmbeddedBroker, tmp_path: Path) -> None:
    addr = amqtt_broker.address
    await exercise(f"mqtt://{addr.host}:{addr.port}", "3.1.1", tmp_path)


async def test_unstored_message_is_redelivered(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Ack after commit: a batch the store failed to write is not acknowledged; the sink drops the
    connection, resumes its persistent session and the broker sends the batch again."""
    gw = CloudTopics("gw-1")
    with FlakyStore(tmp_path / "sink.sqlite", failures=1) as store:
        async with publisher(mosquitto.url, "5") as pub, running_sink(mosquitto.url, store) as sink:
            await publish_all(pub, [(gw.telemetry, envelope("gw-1", seq)) for seq in (1, 2, 3)])
            c = sink.counters
            await eventually(lambda: c.batches == 3, message=lambda: f"{c}")
            assert c.store_errors == 1
            assert c.connects == 2
            assert store.seqs("gw-1") == [1, 2, 3]
            assert store.count("readings") == 15


async def test_batches_published_while_sink_is_down_arrive(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The persistent session keeps QoS 1 batches for a stopped sink; the same database resumes it."""
    gw = CloudTopics("gw-1")
    db = tmp_path / "sink.sqlite"
    async with publisher(mosquitto.url, "5") as pub:
        with SinkStore(db, durable=False) as store:
            async with running_sink(mosquitto.url, store) as sink:
                await pub.publish(gw.telemetry, envelope("gw-1", 1), qos=1)
                await eventually(lambda: sink.counters.batches == 1)
        await publish_all(pub, [(gw.telemetry, envelope("gw-1", seq)) for seq in (2, 3)])
        with SinkStore(db, durable=False) as store:
            async with running_sink(mosquitto.url, store) as sink:
                await eventually(lambda: sink.counters.batches == 2, message=lambda: f"{sink.counters}")
                assert store.seqs("gw-1") == [1, 2, 3]


async def test_shared_subscription_splits_batches(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Two sinks in one MQTT 5 shared group: every batch stored, none by both."""
    gateways = [CloudTopics("gw-a"), CloudTopics("gw-b")]
    n = 30
    stores = [SinkStore(tmp_path / f"sink-{i}.sqlite", durable=False) for i in range(2)]
    try:
        async with (
            publisher(mosquitto.url, "5") as pub,
            running_sink(mosquitto.url, stores[0], shared_group="sinks") as s0,
            running_sink(mosquitto.url, stores[1], shared_group="sinks") as s1,
        ):
            await pub.publish(gateways[0].status, b"online", qos=1, retain=True)
            await publish_all(pub, [(gw.telemetry, envelope(gw.gateway_id, seq))
                                    for seq in range(1, n + 1) for gw in gateways])
            await eventually(lambda: s0.counters.batches + s1.counters.batches == 2 * n,
                             message=lambda: f"{s0.counters} / {s1.counters}")
            assert s0.counters.batches > 0
            assert s1.counters.batches > 0
            # status is not shared: every sink sees the retained status
            await eventually(lambda: s0.gateway_state == s1.gateway_state == {"gw-a": "online"})
        for gw in gateways:
            parts = [set(store.seqs(gw.gateway_id)) for store in stores]
            assert parts[0] | parts[1] == set(range(1, n + 1))
            assert not parts[0] & parts[1]
        assert sum(store.count("readings") for store in stores) == 2 * n * 5
        assert all(build_report(store.path)["totals"]["duplicates"] == 0 for store in stores)
    finally:
        for store in stores:
            store.close()


async def test_shared_subscription_needs_mqtt5(tmp_path: Path) -> None:
    with SinkStore(tmp_path / "s.sqlite") as store, pytest.raises(ValueError, match="MQTT 5"):
        Sink(store, ["mqtt://127.0.0.1:1"], protocol="3.1.1", shared_group="g")


async def test_run_sink_while_reporting(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The CLI entry point: the report reads the database while the sink writes it."""
    db = tmp_path / "cli.sqlite"
    gw = CloudTopics("gw-9")
    stop = asyncio.Event()
    task = asyncio.create_task(run_sink(mosquitto.url, db, protocol="5", shared_group=None,
                                        prefix="edge/{gateway_id}", stop=stop))
    try:
        async with publisher(mosquitto.url, "5") as pub:
            await pub.publish(gw.status, b"online", qos=1, retain=True)

            def status_seen() -> bool:  # retained, so it also proves the sink has subscribed
                try:
                    gateways = build_report(db)["gateways"]
                except (FileNotFoundError, PermanentBridgeError, SinkStoreError):  # not created yet
                    return False
                return bool(gateways) and gateways["gw-9"]["status"] is not None

            await eventually(status_seen)
            await publish_all(pub, [(gw.telemetry, envelope("gw-9", seq)) for seq in (1, 3)])
            await eventually(lambda: build_report(db)["gateways"]["gw-9"]["batches"] == 2)
            report = build_report(db)["gateways"]["gw-9"]
            assert report["gaps"]["telemetry"]["first"] == [[2, 2]]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert build_report(db)["totals"]["readings"] == 10



class RefusingOnce:
    """A stand-in MQTT 3.1.1 broker: accepts the sink's filters, drops the connection, refuses one
    filter on the next SUBSCRIBE (as a cluster node that has just lost a peer may), then accepts again."""

    def __init__(self) -> None:
        self.subacks: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return f"mqtt://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempt = len(self.subacks)
        try:
            while True:
                head, body = await read_packet(reader)
                kind = head >> 4
                if kind == 1:  # CONNECT
                    writer.write(bytes([0x20, 2, 0, 0]))
                elif kind == 8:  # SUBSCRIBE: packet id, then (topic, options) pairs
                    codes: list[int] = []
                    pos = 2
                    while pos < len(body):
                        pos += 2 + int.from_bytes(body[pos:pos + 2], "big") + 1
                        codes.append(0x80 if attempt == 1 and not codes else 0x01)
                    self.subacks.append(bytes(codes))
                    writer.write(bytes([0x90, 2 + len(codes)]) + body[:2] + bytes(codes))
                    if attempt == 0:
                        await writer.drain()
                        break  # the first session ends here: the sink reconnects
                elif kind == 12:  # PINGREQ
                    writer.write(bytes([0xD0, 0]))
                elif kind == 14:  # DISCONNECT
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_refusal_of_filters_once_accepted_is_retried_not_fatal(tmp_path: Path) -> None:
    """Once the filters were accepted, a SUBACK that refuses one makes the sink reconnect after a
    backoff instead of exiting (seen with a NATS node just after a peer died)."""
    broker = RefusingOnce()
    url = await broker.start()
    try:
        with SinkStore(tmp_path / "sink.sqlite") as store:
            async with running_sink(url, store, protocol="3.1.1") as sink:
                await eventually(lambda: len(broker.subacks) >= 3 and sink.ready.is_set(),
                                 message=lambda: f"SUBACKs {broker.subacks}, {sink.counters}")
                assert sink.counters.subscribe_refusals == 1
                assert broker.subacks[1][0] == 0x80 and sink.counters.connects >= 3
    finally:
        assert broker.server is not None
        broker.server.close()


@pytest.mark.parametrize("persistent", [True, False])
async def test_clean_session_starts_a_new_session_every_time(mosquitto: Mosquitto, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture, persistent: bool) -> None:
    """``--clean-session`` (``persistent=False``): the broker keeps nothing for a stopped sink; by
    default the restarted sink resumes its session."""
    caplog.set_level("INFO", logger="bridge.cloud.sink")
    for _ in range(2):
        stop = asyncio.Event()
        task = asyncio.create_task(run_sink(mosquitto.url, tmp_path / "sink.sqlite", stop=stop, persistent=persistent,
                                            client_id="clean-or-not"))
        await eventually(lambda: "sink subscribed" in caplog.text)
        stop.set()
        await asyncio.wait_for(task, 10)
        last = caplog.text
        caplog.clear()
    assert f"session present: {persistent}" in last
