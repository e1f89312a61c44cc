from __future__ import annotations

import asyncio

from gateway.ingest import Ingest


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
