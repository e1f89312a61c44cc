"""A message whose handling raises (a bug) still ends in the accounting, as ``internal_error``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bridge.model import Reading
from bridge.topics import CloudTopics
from gateway.accounting import INTERNAL_ERROR, Accounting
from gateway.batcher import Batcher
from gateway.buffer import Budget, DiskBuffer
from gateway.config import DecodeSection, TopicsSection
from gateway.decode import Decoded, Decoder
from gateway.ingest import Ingest
from gateway.lanes import LaneWriter
from gateway.pipeline import Pipeline
from gateway.processor import Processor
from gateway.rejects import RejectLog
from gateway.rules.engine import Outcome, RuleEngine


class BuggyDecoder(Decoder):
    """The real decoder, except that a payload ``crash`` raises before anything is counted."""

    def decode(self, topic: str, payload: bytes, recv_ms: int) -> Decoded:
        if payload == b"crash":
            raise RecursionError("a bug")
        return super().decode(topic, payload, recv_ms)


class BuggyRules(RuleEngine):
    """Real rules, except that a reading of metric ``boom`` raises: a stand-in for any bug."""

    def process(self, reading: Reading) -> Outcome:
        if reading.metric == "boom":
            raise ZeroDivisionError("a bug")
        return super().process(reading)


async def test_a_failing_message_is_counted_as_internal_error_and_the_identity_holds(tmp_path: Path) -> None:
    acc = Accounting()
    buffer = DiskBuffer(tmp_path / "buf", {"telemetry": Budget(10**9), "control": Budget(10**9)})
    buffer.open()
    lanes = LaneWriter(buffer, CloudTopics("gw"), acc, compression="zlib", level=6, on_written=lambda: None)
    batcher = Batcher(1000, 10**6, 60)
    pipeline = Pipeline(BuggyDecoder(TopicsSection(), DecodeSection()), BuggyRules([]), batcher, acc, RejectLog(),
                        on_batch=lanes.write_batch, on_control=lanes.write_control)
    acc.buffered_fn = lambda: buffer.readings("telemetry")
    acc.pending_fn = lambda: len(batcher)
    ingest = Ingest(100, lambda topic: None)
    processor = Processor(ingest, pipeline, lanes, acc)
    ingest.offer("devices/d1/telemetry", json.dumps({"a": 1, "boom": 2, "c": 3}).encode())  # fails midway
    ingest.offer("devices/d1/telemetry/boom", b"5")  # fails after counting its one reading
    ingest.offer("devices/d1/telemetry", b"crash")  # fails before any reading is counted
    ingest.offer("devices/d1/telemetry", json.dumps({"ok": 1.5}).encode())
    stop = asyncio.Event()
    stop.set()
    await processor.run(stop)  # drains what was queued, then flushes
    assert processor.internal_errors == 3
    assert acc.dropped[INTERNAL_ERROR] == 3  # both 'boom' readings, and the crashing message as one
    assert acc.readings_in == 5  # a, boom, bare boom, the crash, ok; 'c' was never reached
    assert acc.balance() == 0
    assert buffer.readings("telemetry") == 2  # a and ok, flushed to disk
    buffer.close()
