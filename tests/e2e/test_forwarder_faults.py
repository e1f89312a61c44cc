"""Forwarder and link under awkward brokers: a small Receive Maximum, a failing delete, a broker
that accepts the connection and then never answers, and a stop while devices keep publishing."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.errors import BridgeError
from bridge.mqtt.types import ClientSettings
from bridge.uplink.forwarder import ACK_GROUP_MAX, Forwarder, LanePolicy
from bridge.uplink.store import Lane, Record, StoreError
from gateway.config import Secrets
from gateway.service import GatewayService
from gateway.store.buffer import Budget, DiskBuffer
from tests.e2e.fake_broker import publish_topic_and_id, read_packet
from tests.e2e.harness import Devices, gateway_config, local_url, running_gateway, telemetry
from tests.support import Mosquitto, eventually


async def test_small_receive_maximum_strands_nothing_and_control_gets_through(tmp_path: Path) -> None:
    cloud = Mosquitto(extra_conf="max_inflight_messages 4\n")  # Receive Maximum 4 < 20 + 10 windows
    cloud.start()
    try:
        rules = [{"metrics": "v", "alert": {"max": 50, "hysteresis": 1}}]
        cfg = gateway_config(tmp_path, cloud.url, rules=rules, batch={"max_count": 10, "max_age_s": 0.05})
        async with running_gateway(cfg) as gw:
            devices = await Devices.connect(local_url(gw))
            t0 = int(time.time() * 1000)
            await devices.publish_all(telemetry(f"d{i % 4}", i, t0 + i, v=float(i % 100)) for i in range(1, 2001))
            await devices.close()
            await eventually(lambda: gw.accounting.delivered == 2000 and gw.buffer.depth("control") == 0
                             and gw.buffer.depth("telemetry") == 0, message=lambda: str(gw.snapshot()))
            assert gw.link.connection is not None and gw.link.connection.info.inflight_window == 4
            assert gw.accounting.control_delivered == gw.accounting.alerts > 0
            assert gw.buffer.available("telemetry") == gw.buffer.depth("telemetry") == 0
            assert gw.accounting.balance() == 0
    finally:
        cloud.cleanup()


class FlakyDeleteBuffer(DiskBuffer):
    """A real disk buffer whose first delete fails as on a full disk."""

    failures = 1

    def ack(self, *keys: str) -> dict[str, Record]:
        if self.failures:
            self.failures -= 1
            raise StoreError("buffer delete failed: database or disk is full")
        return super().ack(*keys)


async def test_a_failed_delete_keeps_the_record_and_the_lane_moving(tmp_path: Path, mosquitto: Mosquitto) -> None:
    buf = FlakyDeleteBuffer(tmp_path / "buf", {"telemetry": Budget(10**9), "control": Budget(10**9)})
    buf.open()
    for _ in range(3):
        buf.append("telemetry", "edge/gw/telemetry", lambda s: b"\x01\x00" + bytes(10), 1)
    delivered: list[int] = []
    policies: dict[Lane, LanePolicy] = {"control": LanePolicy(1, 10), "telemetry": LanePolicy(1, 1)}
    fw = Forwarder(buf, policies, on_delivered=lambda r, n: delivered.append(r.seq), on_rejected=lambda r, w: None)
    conn = await MqttConnection.open(mosquitto.url, ClientSettings(client_id="gw", protocol="5"))
    stop = asyncio.Event()
    pump = asyncio.create_task(fw.pump(conn, stop))
    await eventually(lambda: buf.depth("telemetry") == 0, message=lambda: f"delivered {delivered}")
    stop.set()
    await pump
    await conn.close()
    assert sorted(delivered) == [1, 2, 3]  # seq 1 was published twice (its first delete failed), counted once
    buf.close()


class CountingBuffer(DiskBuffer):
    """A real disk buffer that records the keys of each delete transaction."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deletes: list[tuple[str, ...]] = []

    def ack(self, *keys: str) -> dict[str, Record]:
        self.deletes.append(keys)
        return super().ack(*keys)


async def test_a_drain_deletes_acknowledged_telemetry_in_groups(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A backlog goes out with one delete transaction per group of PUBACKs, not one per record, and
    each record is still delivered once and removed; control records are deleted one by one, at once."""
    buf = CountingBuffer(tmp_path / "buf", {"telemetry": Budget(10**9), "control": Budget(10**9)})
    buf.open()
    for _ in range(400):
        buf.append("telemetry", "edge/gw/telemetry", lambda s: b"\x01\x00" + bytes(200), 1)
    for _ in range(3):
        buf.append("control", "edge/gw/alerts", lambda s: b"{}", 0)
    buf.mark_backlog()
    delivered: list[tuple[str, int]] = []
    policies: dict[Lane, LanePolicy] = {"control": LanePolicy(1, 10), "telemetry": LanePolicy(1, 20)}
    fw = Forwarder(buf, policies, on_delivered=lambda r, n: delivered.append((r.lane, r.seq)),
                   on_rejected=lambda r, w: None)
    conn = await MqttConnection.open(mosquitto.url, ClientSettings(client_id="gw", protocol="5"))
    stop = asyncio.Event()
    pump = asyncio.create_task(fw.pump(conn, stop))
    await eventually(lambda: buf.depth("telemetry") == buf.depth("control") == 0,
                     message=lambda: f"{len(delivered)} delivered")
    stop.set()
    await pump
    await conn.close()
    assert sorted(seq for lane, seq in delivered if lane == "telemetry") == list(range(1, 401))
    assert sorted(seq for lane, seq in delivered if lane == "control") == [1, 2, 3]
    telemetry_deletes = [keys for keys in buf.deletes if any(k.startswith("t:") for k in keys)]
    assert sum(k.startswith("t:") for keys in telemetry_deletes for k in keys) == 400
    assert len(telemetry_deletes) <= 400 // 4, f"{len(telemetry_deletes)} delete transactions for 400 records"
    assert max(len(keys) for keys in telemetry_deletes) <= ACK_GROUP_MAX
    buf.close()


async def _stalling_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts the connection (CONNACK, MQTT 5, success) and then never answers anything."""
    await reader.read(1024)
    writer.write(b"\x20\x03\x00\x00\x00")
    await writer.drain()
    while await reader.read(4096):
        pass


async def test_stop_is_prompt_when_the_broker_stalls_after_connack(tmp_path: Path) -> None:
    server = await asyncio.start_server(_stalling_broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = gateway_config(tmp_path, f"mqtt://127.0.0.1:{port}", uplink={"keepalive_s": 120})
    svc = GatewayService(cfg, Secrets())
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    await eventually(lambda: svc.link.connects >= 1)
    stop.set()
    # keepalive is 120 s: returning at all within the test's bound shows stop is not stuck behind it
    await asyncio.wait_for(task, 30)
    server.close()
    await server.wait_closed()


async def test_everything_acknowledged_to_devices_is_counted_across_a_stop(tmp_path: Path) -> None:
    cfg = gateway_config(tmp_path, "mqtt://127.0.0.1:1")  # uplink down: all stays on disk
    svc = GatewayService(cfg, Secrets())
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    await svc.started.wait()
    acked = {"n": 0}

    async def device(n: int) -> None:
        conn = await MqttConnection.open(local_url(svc), ClientSettings(client_id=f"dev{n}", protocol="3.1.1"))
        seq = 0
        try:
            while True:
                seq += 1
                await conn.publish(f"devices/d{n}/telemetry", json.dumps({"seq": seq, "t": 1.0}).encode(), 1)
                acked["n"] += 1
        except BridgeError:  # the broker going away ends the device
            return
        finally:
            await conn.close()

    devices = [asyncio.create_task(device(n)) for n in range(4)]
    await eventually(lambda: acked["n"] >= 500)
    stop.set()
    await asyncio.wait_for(task, 30)
    # The broker is gone: no PUBACK can arrive any more, so the count is final. (amqtt may leave a
    # socket open after shutdown; such a device would only notice at its keepalive.)
    for d in devices:
        d.cancel()
    await asyncio.gather(*devices, return_exceptions=True)
    assert svc.accounting.readings_in == acked["n"]  # every PUBACK the devices got is accounted for
    assert svc.accounting.balance() == 0


async def _broker_with_no_quota_for_telemetry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """MQTT 5 broker stand-in: PUBACK 0x97 (quota exceeded: retry later) for telemetry, success for
    everything else."""
    try:
        while True:
            head, body = await read_packet(reader)
            if head >> 4 == 1:  # CONNECT
                writer.write(b"\x20\x03\x00\x00\x00")
            elif head >> 4 == 12:  # PINGREQ
                writer.write(b"\xd0\x00")
            elif head >> 4 == 3 and (head >> 1) & 3:
                topic, packet_id = publish_topic_and_id(body)
                code = 0x97 if topic.endswith("/telemetry") else 0x00
                writer.write(b"\x40\x03" + packet_id + bytes([code]))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def test_a_telemetry_batch_told_to_retry_later_does_not_hold_control_back(tmp_path: Path) -> None:
    server = await asyncio.start_server(_broker_with_no_quota_for_telemetry, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    buf = DiskBuffer(tmp_path / "buf", {"telemetry": Budget(10**9), "control": Budget(10**9)})
    buf.open()
    buf.append("telemetry", "edge/gw/telemetry", lambda s: b"\x01\x00" + bytes(10), 1)
    delivered: list[tuple[str, bool]] = []
    policies: dict[Lane, LanePolicy] = {"control": LanePolicy(1, 10), "telemetry": LanePolicy(1, 5)}
    fw = Forwarder(buf, policies, on_rejected=lambda r, w: None,
                   on_delivered=lambda r, n: delivered.append((r.lane, fw._paused_until["telemetry"]
                                                               > asyncio.get_running_loop().time())))
    conn = await MqttConnection.open(f"mqtt://127.0.0.1:{port}", ClientSettings(client_id="gw", protocol="5"))
    stop = asyncio.Event()
    pump = asyncio.create_task(fw.pump(conn, stop))
    try:
        await eventually(lambda: fw._paused_until["telemetry"] > 0)
        buf.append("control", "edge/gw/alerts", lambda s: b'{"kind":"alert"}', 0)
        fw.wake()
        await eventually(lambda: len(delivered) > 0)
        # the alert went out while the telemetry lane was still paused, not after the pause
        assert delivered == [("control", True)]
        assert buf.depth("telemetry") == 1  # the refused batch is kept for later
    finally:
        stop.set()
        await asyncio.wait_for(pump, 10)
        await conn.close()
        buf.close()
        server.close()
        await server.wait_closed()
