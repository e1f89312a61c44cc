from __future__ import annotations

import asyncio

from gateway.config import DecodeSection, TopicsSection
from gateway.process.decode import Decoder
from gateway.source.ingest import Ingest


async def test_full_queue_drops_new_messages_and_counts_them() -> None:
    overflow: list[str] = []
    ingest = Ingest(3, overflow.append)
    for i in range(5):
        ingest.offer(f"t/{i}", b"x")
    assert len(ingest) == 3 and ingest.high_water == 3
    assert overflow == ["t/3", "t/4"]
    assert [t for t, _p, _ts in ingest.drain(10)] == ["t/0", "t/1", "t/2"]
    ingest.offer("t/5", b"x")
    assert len(ingest) == 1


async def test_wait_returns_when_a_message_arrives_or_on_timeout() -> None:
    ingest = Ingest(10, lambda _t: None)
    waiter = asyncio.create_task(ingest.wait(30))
    await asyncio.sleep(0)
    assert not waiter.done()
    ingest.offer("t", b"x")
    await asyncio.wait_for(waiter, 5)
    ingest.drain(10)
    await asyncio.wait_for(ingest.wait(0.01), 5)  # times out quietly


async def test_control_messages_are_drained_before_queued_telemetry() -> None:
    overflow: list[str] = []
    ingest = Ingest(3, overflow.append, is_control=lambda t: t.endswith("/responses"))
    for i in range(4):
        ingest.offer(f"devices/d{i}/telemetry", b"x")
    ingest.offer("devices/d1/responses", b"r")  # the telemetry queue is full: control has its own bound
    assert overflow == ["devices/d3/telemetry"]
    assert len(ingest) == 4
    assert [t for t, _p, _ts in ingest.drain(2)] == ["devices/d1/responses", "devices/d0/telemetry"]
    ingest.offer("devices/d2/responses", b"r")
    assert [t for t, _p, _ts in ingest.drain(10)] == [
        "devices/d2/responses", "devices/d1/telemetry", "devices/d2/telemetry"]


def test_decoder_classifies_control_topics() -> None:
    decoder = Decoder(TopicsSection(), DecodeSection())
    assert decoder.is_control("devices/d1/events") and decoder.is_control("devices/d1/responses")
    assert not decoder.is_control("devices/d1/telemetry") and not decoder.is_control("devices/d1/telemetry/t")
    assert not decoder.is_control("devices/d1/commands/ping")


async def test_a_control_message_ends_the_coalescing_pause_telemetry_does_not() -> None:
    ingest = Ingest(100, lambda t: None, is_control=lambda t: t.endswith("/responses"))
    pause = asyncio.ensure_future(ingest.pause(30))
    await asyncio.sleep(0)
    ingest.offer("devices/d/telemetry", b"1")
    await asyncio.sleep(0)
    assert not pause.done()  # telemetry keeps gathering
    ingest.offer("devices/d/responses", b"{}")
    await asyncio.wait_for(pause, 1)  # a response ends it at once (not after 30 s)
    assert [t for t, _, _ in ingest.drain(10)] == ["devices/d/responses", "devices/d/telemetry"]
