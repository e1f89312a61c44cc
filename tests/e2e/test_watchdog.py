"""Zombie links: a link that stays "connected" but carries nothing is torn down and rebuilt by the
uplink's progress watchdog, and nothing is lost. The faults come from a real TCP proxy between the
gateway and a real mosquitto (tests/chaos.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

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
