"""The bulk lane of the forwarder (bridge/uplink/bulk.py) against a real mosquitto and a real disk
buffer: control goes ahead of queued bulk messages, bulk stays out of the slots reserved for control
and telemetry, its window and byte caps hold (counted in bytes with a stepped clock, not timed), and
what a dropped connection leaves in flight goes back to the source.

The bulk source here is a plain in-memory list implementing the port; the gateway's own source
(gateway/files/) is tested end to end elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import ClientSettings
from bridge.uplink.bulk import BulkItem, BulkLane, BulkPolicy
from bridge.uplink.forwarder import Forwarder, LanePolicy
from bridge.uplink.pacing import TokenBucket
from bridge.uplink.store import Lane
from gateway.store.buffer import Budget, DiskBuffer
from tests.e2e.fake_broker import publish_topic_and_id, read_packet
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
        self.conn: MqttConnection | None = None  # when set: the most publishes unacknowledged on it
        self.wire_max = 0
        self.released = 0
        self.not_sent = 0  # released one by one: never went out, or the broker asked to retry later
        self.failed = 0
        self.rejected: list[tuple[str, str]] = []

    def available(self) -> int:
        return len(self.waiting)

    def take(self, limit: int) -> list[BulkItem]:
        items, self.waiting = self.waiting[:limit], self.waiting[limit:]
        for item in items:
            self.out[item.key] = item
        self.published += len(items)
        self.max_in_flight = max(self.max_in_flight, len(self.out))
        if self.conn is not None:  # what the connection has unacknowledged once these go out (every lane)
            self.wire_max = max(self.wire_max, self.conn.info.inflight_window - self.conn.free_slots + len(items))
        return items

    def settle(self, key: str, ok: bool) -> None:
        item = self.out.pop(key)
        if ok:
            self.acked.append(key)
        else:
            self.failed += 1
            self.waiting.insert(0, item)

    def reject(self, key: str, reason: str) -> None:
        self.out.pop(key)
        self.rejected.append((key, reason))

    def release(self, key: str) -> None:
        self.not_sent += 1
        self.waiting.insert(0, self.out.pop(key))

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
    source.conn = conn
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
    # 2 bulk publishes at most, plus the one control record that may be in flight: never the 6 slots
    # a window of 32 would take without the reserves
    assert source.wire_max <= 3


async def test_window_and_byte_cap_hold_counted_in_bytes(tmp_path: Path, mosquitto: Mosquitto) -> None:
    clock = FakeClock(0.0)
    source = ListSource(50, 1000)
    item_bytes = 1000 + len("edge/gw/files/up/x/chunk")
    # the bucket holds max(burst, one second of the rate) = 5000 bytes
    lane = BulkLane(source, BulkPolicy(window=8, max_bytes_per_s=5000, burst_bytes=3000, item_bytes=item_bytes),
                    on_settled=lambda: None, clock=clock)
    conn = await MqttConnection.open(mosquitto.url, ClientSettings(client_id="gw", protocol="5", max_inflight=50))
    try:
        def fill() -> None:
            lane.fill(conn, conn.free_slots, None)

        fill()
        assert source.published == 4  # about one second of the cap in flight (4 x 1024 bytes of 5000)
        await eventually(lambda: len(source.acked) == 4)
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
        assert source.published >= 25  # and the cap is used, not starved (4 in flight per second at most)
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


Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _broker_answering(codes: list[int], ack: bool = True) -> Serve:
    """MQTT 5 broker stand-in: the PUBACKs of the first publishes carry ``codes``, then success
    (no PUBACK at all without ``ack``)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head, body = await read_packet(reader)
                if head >> 4 == 1:  # CONNECT
                    writer.write(b"\x20\x03\x00\x00\x00")
                elif head >> 4 == 3 and (head >> 1) & 3 and ack:
                    _topic, packet_id = publish_topic_and_id(body)
                    writer.write(b"\x40\x03" + packet_id + bytes([codes.pop(0) if codes else 0]))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return serve


async def test_a_failed_publish_is_an_attempt_that_pauses_the_lane_and_a_refusal_gives_the_item_up() -> None:
    """A "retry later" PUBACK counts as an attempt (so the source's limit ends a refusal that never
    clears) and pauses the lane instead of sending again at once; a permanent refusal goes to
    ``reject``: the source gives the item up, it is not sent again."""
    server = await asyncio.start_server(_broker_answering([0x97, 0x87]), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clock = FakeClock(0.0)
    source = ListSource(2, 100)
    lane = BulkLane(source, BulkPolicy(window=1), on_settled=lambda: None, clock=clock)
    conn = await MqttConnection.open(f"mqtt://127.0.0.1:{port}", ClientSettings(client_id="gw", protocol="5"))
    try:
        lane.fill(conn, 10, None)
        await eventually(lambda: source.failed == 1)  # 0x97 quota exceeded: an attempt, the item waits again
        assert source.not_sent == 0 and [i.key for i in source.waiting] == ["0", "1"]
        assert lane.fill(conn, 10, None) == 1.0 and source.in_flight() == 0  # paused
        clock.advance(1.0)
        lane.fill(conn, 10, None)
        await eventually(lambda: len(source.rejected) == 1)  # 0x87 not authorized: given up
        assert source.rejected[0][0] == "0" and "0x87" in source.rejected[0][1]
        assert lane.fill(conn, 10, None) == 1.0 and source.published == 2  # paused again: no hot loop
        clock.advance(1.0)
        lane.fill(conn, 10, None)
        await eventually(lambda: source.acked == ["1"])
        assert source.published == 3 and lane.failed == 2
    finally:
        await conn.close()
        server.close()
        await server.wait_closed()


async def test_bulk_never_borrows_from_the_uplink_cap_and_keeps_about_a_second_of_it_in_flight(
        mosquitto: Mosquitto) -> None:
    """Under a shared 8 kB/s uplink cap a 60 kB chunk goes only when the bucket holds it and half the
    bucket for telemetry: live telemetry then never waits for a chunk's bytes to drain (counted in
    the bucket's bytes, not timed). With a lane cap of 20 kB/s at most ~1 s of it is in flight."""
    clock = FakeClock(0.0)
    source = ListSource(4, 60_000)
    item_bytes = 60_000 + 100
    uplink = TokenBucket(8000, 65536, clock)
    lane = BulkLane(source, BulkPolicy(window=4, item_bytes=item_bytes), on_settled=lambda: None, clock=clock)
    conn = await MqttConnection.open(mosquitto.url, ClientSettings(client_id="gw", protocol="5", max_inflight=50))
    try:
        assert lane.fill(conn, 10, uplink) is not None and source.published == 1  # a full bucket: one chunk
        await eventually(lambda: source.acked == ["0"])
        wait = lane.fill(conn, 10, uplink)
        assert source.published == 1 and wait is not None and wait > 0  # it waits for the bucket to refill
        assert uplink.wait_s() == 0.0  # what is left is telemetry's: a live batch goes at once
        clock.advance(wait)
        lane.fill(conn, 10, uplink)
        assert source.published == 2 and uplink.wait_s() == 0.0
        capped = ListSource(8, 8000)
        lane = BulkLane(capped, BulkPolicy(window=8, max_bytes_per_s=20_000, item_bytes=8100),
                        on_settled=lambda: None, clock=clock)
        lane.fill(conn, 10, None)
        assert capped.published == 2  # 2 x 8100 bytes of the 20 000 a second allows; the window would take 8
        await eventually(lambda: len(capped.acked) == 2)
        lane.fill(conn, 10, None)
        assert capped.published == 4
    finally:
        await conn.close()


async def test_bulk_in_flight_does_not_count_towards_the_ack_timeout(tmp_path: Path) -> None:
    """A broker that never acknowledges: the chunk waits, but the forwarder's oldest unacknowledged
    age (what the ack timeout tears the link down on) is the control and telemetry records' only."""
    server = await asyncio.start_server(_broker_answering([], ack=False), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    buf = _buffer(tmp_path / "buf")
    source = ListSource(1, 100)
    fw = Forwarder(buf, POLICIES, on_delivered=lambda r, n: None, on_rejected=lambda r, w: None, bulk=source)
    conn = await MqttConnection.open(f"mqtt://127.0.0.1:{port}", ClientSettings(client_id="gw", protocol="5"))
    try:
        assert fw.bulk is not None
        fw.bulk.fill(conn, 10, None)
        assert source.published == 1 and source.in_flight() == 1  # out, and never acknowledged
        assert fw.oldest_unacked_s() == 0.0
    finally:
        await conn.close()
        buf.close()
        server.close()
        await server.wait_closed()
