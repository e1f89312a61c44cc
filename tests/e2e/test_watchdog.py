"""Zombie links: a link that stays "connected" but carries nothing is torn down and rebuilt by the
uplink's progress watchdog, and nothing is lost. The faults come from a real TCP proxy between the
gateway and a real mosquitto (tests/chaos.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bridge.cloud.sink import Sink
from bridge.cloud.sink_store import SinkStore
from bridge.mqtt.backoff import DecorrelatedJitter
from bridge.protocol.codec import decode_batch
from gateway.config import Secrets
from gateway.service import GatewayService
from tests.chaos import ChaosProxy
from tests.e2e.fake_broker import publish_topic_and_id, read_packet
from tests.e2e.harness import CloudCollector, PacedDevices, gateway_config, local_url, running_gateway
from tests.support import Mosquitto, eventually

KEEPALIVE_S = 5


@pytest.fixture
async def proxy(mosquitto: Mosquitto) -> AsyncIterator[ChaosProxy]:
    async with ChaosProxy(mosquitto.host, mosquitto.port) as p:
        yield p


@pytest.mark.parametrize("fault", ["blackhole", "stall"])
async def test_a_mute_link_is_rebuilt_within_two_keepalives_and_nothing_is_lost(
        tmp_path: Path, mosquitto: Mosquitto, proxy: ChaosProxy, fault: str) -> None:
    cfg = gateway_config(tmp_path, f"mqtt://127.0.0.1:{proxy.port}", uplink={"keepalive_s": KEEPALIVE_S})
    cloud = CloudCollector(mosquitto.url)  # directly on the broker: only the gateway's link is faulty
    await cloud.connect()
    faults: dict[str, Callable[[], None]] = {"blackhole": lambda: proxy.blackhole_after(0), "stall": proxy.stall}
    try:
        async with running_gateway(cfg) as gw:
            devices = PacedDevices(local_url(gw), devices=5, rate_hz=20)
            devices.start()
            await eventually(lambda: gw.accounting.batches_delivered >= 3)
            faults[fault]()  # no FIN, no RST: the socket looks fine, nothing gets through
            started = time.monotonic()
            # the requirement: a half-open link is detected within twice the keepalive
            await eventually(lambda: gw.link.watchdog_trips == 1, timeout=2 * KEEPALIVE_S)
            detected = time.monotonic() - started
            assert "watchdog" in gw.link.last_error
            proxy.passthrough()  # the network heals; the gateway reconnects on its own
            await eventually(lambda: gw.link.connects >= 2, timeout=10)
            await devices.stop()
            await eventually(lambda: gw.accounting.delivered == devices.acked_total, timeout=20)
            assert gw.accounting.balance() == 0
            await eventually(lambda: len(cloud.data.readings()) == devices.acked_total, timeout=10)
    finally:
        await cloud.close()
    print(f"{fault}: detected after {detected:.2f} s (keepalive {KEEPALIVE_S} s)")
    got = {(r.device, r.seq) for r in cloud.data.readings()}
    assert got == {(d, s) for d, acked in devices.acked.items() for s in acked}


async def _broker_that_never_acks_telemetry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers CONNECT, PINGREQ, SUBSCRIBE and the status PUBLISH like a broker (MQTT 5), never a
    telemetry PUBLISH: alive for the keepalive, stuck for the data."""
    try:
        while True:
            head, body = await read_packet(reader)
            kind = head >> 4
            if kind == 1:  # CONNECT -> CONNACK success, no properties
                writer.write(b"\x20\x03\x00\x00\x00")
            elif kind == 12:  # PINGREQ -> PINGRESP
                writer.write(b"\xd0\x00")
            elif kind == 8:  # SUBSCRIBE -> SUBACK granting QoS 1 to every filter
                pos = 3 + body[2]  # packet id, then the properties (length byte + properties)
                granted = 0
                while pos < len(body):
                    pos += 2 + int.from_bytes(body[pos:pos + 2], "big") + 1
                    granted += 1
                writer.write(bytes([0x90, 3 + granted]) + body[:2] + b"\x00" + b"\x01" * granted)
            elif kind == 3 and (head >> 1) & 3:  # PUBLISH QoS>0
                topic, packet_id = publish_topic_and_id(body)
                if topic.endswith("/status"):
                    writer.write(b"\x40\x02" + packet_id)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def test_records_in_flight_without_a_puback_trip_the_watchdog(tmp_path: Path) -> None:
    server = await asyncio.start_server(_broker_that_never_acks_telemetry, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = gateway_config(tmp_path, f"mqtt://127.0.0.1:{port}", uplink={"keepalive_s": 30, "ack_timeout_s": 1})
    svc = GatewayService(cfg, Secrets())
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    try:
        await eventually(svc.started.is_set)
        assert svc.embedded is not None
        devices = PacedDevices(local_url(svc), devices=2, rate_hz=10)
        devices.start()
        await eventually(lambda: svc.link.watchdog_trips >= 1, timeout=15)
        await eventually(lambda: svc.link.connects >= 2)  # and it reconnects
        assert "no PUBACK" in svc.link.previous_error and svc.link.last_error == ""  # cleared by the connect
        await devices.stop()
        assert svc.accounting.delivered == 0 and svc.accounting.balance() == 0  # all still on disk
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        server.close()
        await server.wait_closed()


async def test_one_lost_publish_is_resent_within_ack_timeout_while_other_pubacks_flow(
        tmp_path: Path, mosquitto: Mosquitto, proxy: ChaosProxy) -> None:
    """One telemetry PUBLISH vanishes on a live link while the batches after it are acknowledged:
    the watchdog goes by the oldest record in flight, so that record is resent on a rebuilt link
    within ``ack_timeout_s``, and the sink stores every reading exactly once."""
    ack_timeout_s = 3.0
    cfg = gateway_config(tmp_path, f"mqtt://127.0.0.1:{proxy.port}",
                         uplink={"keepalive_s": 30, "ack_timeout_s": ack_timeout_s})
    with SinkStore(tmp_path / "sink.sqlite", durable=False) as store:
        sink = Sink(store, [mosquitto.url], backoff=DecorrelatedJitter(0.05, 0.5), connect_timeout_s=5.0)
        sink_stop = asyncio.Event()
        sink_task = asyncio.create_task(sink.run(sink_stop))
        try:
            await asyncio.wait_for(sink.ready.wait(), 10)
            async with running_gateway(cfg) as gw:
                devices = PacedDevices(local_url(gw), devices=4, rate_hz=20)
                devices.start()
                await eventually(lambda: gw.accounting.batches_delivered >= 3)
                proxy.drop_publish("edge/gw-test/telemetry")
                await eventually(lambda: len(proxy.dropped) == 1)
                dropped_at = time.monotonic()
                delivered_after_drop = gw.accounting.batches_delivered
                lost_seq = decode_batch(proxy.dropped[0][1]).seq
                # the gateway must notice within ack_timeout_s (plus the watchdog's tick and slack for a
                # loaded machine), although the batches sent after the lost one keep being acknowledged
                await eventually(lambda: gw.link.watchdog_trips == 1, timeout=ack_timeout_s + 10)
                tripped_after = time.monotonic() - dropped_at
                assert gw.accounting.batches_delivered > delivered_after_drop  # PUBACKs kept flowing
                # the reason stays in last_error until the rebuilt link connects, then in previous_error
                assert "oldest record in flight" in gw.link.last_error + gw.link.previous_error
                await eventually(lambda: lost_seq in store.seqs("gw-test"), timeout=20)  # resent
                await devices.stop()
                await eventually(lambda: gw.accounting.delivered == devices.acked_total, timeout=20)
                assert gw.accounting.balance() == 0
                assert gw.link.watchdog_trips == 1
            await eventually(lambda: store.count("readings") >= devices.acked_total, timeout=20)
            seqs = store.seqs("gw-test")
            assert seqs == list(range(1, len(seqs) + 1))  # no gap: the lost batch is there
            assert store.count("readings") == devices.acked_total  # each reading exactly once
        finally:
            sink_stop.set()
            await asyncio.wait_for(sink_task, 10)
    print(f"lost batch {lost_seq}: link rebuilt {tripped_after:.2f} s after the drop "
          f"(ack_timeout_s {ack_timeout_s:g})")
