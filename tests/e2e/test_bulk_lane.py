"""The bulk lane of the forwarder (bridge/uplink/bulk.py) against a real mosquitto and a real disk
buffer: control goes ahead of queued bulk messages, bulk stays out of the slots reserved for control
and telemetry, its window and byte caps hold (counted in bytes with a stepped clock, not timed), and
what a dropped connection leaves in flight goes back to the source.

The bulk source here is a plain in-memory list implementing the port; the gateway's own source
(gateway/files/) is tested end to end elsewhere."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import ClientSettings
from bridge.uplink.bulk import BulkItem, BulkLane, BulkPolicy
from bridge.uplink.forwarder import Forwarder, LanePolicy
from bridge.uplink.store import Lane
from gateway.store.buffer import Budget, DiskBuffer
from tests.support import FakeClock, Mosquitto, RecordingClient, eventually

POLICIES: dict[Lane, LanePolicy] = {"control": LanePolicy(1, 10), "telemetry": LanePolicy(1, 10)}


class ListSource:
    """Items in order; a failed or released item goes back to the front."""

    def __init__(self, count: int, size: int, prefix: str = "edge/gw/files/up/x") -> None:
        self.waiting = [BulkItem(str(i), f"{prefix}/chunk", i.to_bytes(4, "big") * (size // 4)) for i in range(count)]
        self.out: dict[str, BulkItem] = {}
        self.acked: list[str] = []
        self.published = 0
        self.max_in_flight = 0
        self.released = 0

    def available(self) -> int:
        return len(self.waiting)

    def take(self, limit: int) -> list[BulkItem]:
        items, self.waiting = self.waiting[:limit], self.waiting[limit:]
        for item in items:
            self.out[item.key] = item
        self.published += len(items)
        self.max_in_flight = max(self.max_in_flight, len(self.out))
        return items

    def settle(self, key: str, ok: bool) -> None:
        item = self.out.pop(key)
        if ok:
            self.acked.append(key)
        else:
            self.waiting.insert(0, item)

    def release(self, key: str) -> None:
        self.settle(key, False)

    def release_all(self) -> int:
        n = len(self.out)
        self.waiting[:0] = sorted(self.out.values(), key=lambda i: int(i.key))
        self.out.clear()
        self.released += n
        return n

    def in_flight(self) -> int:
        return len(self.out)


def _buffer(path: Path) -> DiskBuffer:
    buf = DiskBuffer(path, {"telemetry": Budget(10**9), "control": Budget(10**9)})
    buf.open()
    return buf


def _control(buf: DiskBuffer, body: bytes) -> None:
    buf.append("control", "edge/gw/alerts", lambda seq: body, 0)


async def test_control_overtakes_queued_bulk_and_bulk_keeps_out_of_reserved_slots(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    buf = _buffer(tmp_path / "buf")
    source = ListSource(40, 2048)
    fw = Forwarder(buf, POLICIES, on_delivered=lambda r, n: None, on_rejected=lambda r, w: None, bulk=source,
                   bulk_policy=BulkPolicy(window=32, max_bytes_per_s=20_000, burst_bytes=4096))
    _control(buf, b"first")  # waiting before the pump starts: it goes before any bulk
    sub = RecordingClient(mosquitto.port).start()
    await sub.connected()
    await sub.subscribe("edge/gw/#")
    # 6 slots: 2 kept for control, 2 for telemetry, so bulk gets 2 whatever its window of 32
    conn = await MqttConnection.open(mosquitto.url, ClientSettings(client_id="gw", protocol="5", max_inflight=6))
    stop = asyncio.Event()
    pump = asyncio.create_task(fw.pump(conn, stop))
    try:
        await eventually(lambda: len(source.acked) >= 10)
        _control(buf, b"second")
        fw.wake()
        not_yet_published = source.published  # every bulk item from this one on was still queued
        await eventually(lambda: len(source.acked) == 40 and sub.has("edge/gw/alerts") and
                         len(sub.on("edge/gw/alerts")) == 2, timeout=30)
    finally:
        stop.set()
        await pump
        await conn.close()
        sub.stop()
        buf.close()
    order = [(m.topic, m.payload) for m in sub.messages]
    bulk_index = [int.from_bytes(p[:4], "big") for t, p in order if t.endswith("/chunk")]
    assert bulk_index == list(range(40))  # in order, each once
    assert order[0] == ("edge/gw/alerts", b"first")
    second = order.index(("edge/gw/alerts", b"second"))
    later = [i for i, (t, p) in enumerate(order) if t.endswith("/chunk") and
             int.from_bytes(p[:4], "big") >= not_yet_published]
    assert later and second < min(later)  # the control record overtook every bulk item still queued
    assert source.max_in_flight == 2


async def test_window_and_byte_cap_hold_counted_in_bytes(tmp_path: Path, mosquitto: Mosquitto) -> None:
    clock = FakeClock(0.0)
    source = ListSource(50, 1000)
    item_bytes = 1000 + len("edge/gw/files/up/x/chunk")
    # the bucket holds max(burst, one second of the rate) = 5000 bytes
    lane = BulkLane(source, BulkPolicy(window=8, max_bytes_per_s=5000, burst_bytes=3000), on_settled=lambda: None,
                    clock=clock)
    conn = await MqttConnection.open(mosquitto.url, ClientSettings(client_id="gw", protocol="5", max_inflight=50))
    try:
        def fill() -> None:
            lane.fill(conn, conn.free_slots, None)

        fill()
        assert source.published == 5  # a full bucket: 5 items (the fifth overdraws it)
        await eventually(lambda: len(source.acked) == 5)
        fill()
        assert source.published == 5  # the bucket is empty until the clock moves
        for second in range(1, 6):
            clock.advance(1.0)
            fill()
            await eventually(lambda: source.in_flight() == 0)
            # never more than the bucket + rate x elapsed + one item's overdraw
            assert source.published * item_bytes <= 5000 + 5000 * second + item_bytes
        assert source.published >= 25  # and the cap is used, not starved
        windowed = ListSource(50, 1000)
        lane = BulkLane(windowed, BulkPolicy(window=4), on_settled=lambda: None)
        lane.fill(conn, conn.free_slots, None)
        assert windowed.in_flight() == 4  # no cap: the window is what holds
        lane.fill(conn, 2, None)
        assert windowed.in_flight() == 4
        lane.connection_ended()  # before any PUBACK could be read: all four go back, in order
        assert windowed.released == 4 and windowed.in_flight() == 0
        assert [i.key for i in windowed.waiting[:4]] == ["0", "1", "2", "3"]
        await asyncio.sleep(0)
        await conn.close()
        assert windowed.acked == []  # PUBACKs of the ended connection are not settled twice
    finally:
        await conn.close()
