"""A control record goes out from the step that wrote it: ``Forwarder.wake()`` publishes it while
the pump runs, instead of leaving it for the pump's next pass of the event loop. Real disk buffer,
real mosquitto; the proof is what is in flight right after the call, with no await in between."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import ClientSettings
from bridge.uplink.forwarder import Forwarder, LanePolicy
from bridge.uplink.store import Lane
from gateway.store.buffer import Budget, DiskBuffer
from tests.support import Mosquitto, eventually

POLICIES: dict[Lane, LanePolicy] = {"control": LanePolicy(1, 10), "telemetry": LanePolicy(1, 10)}


def _control(buf: DiskBuffer, body: bytes) -> None:
    buf.append("control", "edge/gw/alerts", lambda seq: body + str(seq).encode(), 0)


async def test_wake_publishes_control_at_once_in_order_and_only_while_pumping(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    buf = DiskBuffer(tmp_path / "buf", {"telemetry": Budget(10**9), "control": Budget(10**9)})
    buf.open()
    delivered: list[int] = []
    fw = Forwarder(buf, POLICIES, on_delivered=lambda r, n: delivered.append(r.seq), on_rejected=lambda r, w: None)
    _control(buf, b"a")
    fw.wake()  # no pump yet: nothing is sent, the record waits on disk
    assert buf.in_flight("control") == 0
    conn = await MqttConnection.open(mosquitto.url, ClientSettings(client_id="gw", protocol="5"))
    stop = asyncio.Event()
    pump = asyncio.create_task(fw.pump(conn, stop))
    try:
        await eventually(lambda: delivered == [1] and buf.depth("control") == 0)
        _control(buf, b"b")
        _control(buf, b"c")
        fw.wake()
        assert buf.in_flight("control") == 2  # published by wake() itself, before any await
        await eventually(lambda: delivered == [1, 2, 3] and buf.depth("control") == 0)
    finally:
        stop.set()
        await pump
        await conn.close()
        buf.close()
    fw.wake()  # after the pump ended it leaves the (now closed) store alone
