"""A message whose handling raises (a bug) still ends in the accounting, as ``internal_error``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bridge.protocol.model import Reading
from bridge.protocol.topics import CloudTopics
from gateway.config import DecodeSection, TopicsSection
from gateway.observe.accounting import INTERNAL_ERROR, Accounting
from gateway.process.batcher import Batcher
from gateway.process.decode import Decoded, Decoder
from gateway.process.pipeline import Pipeline
from gateway.process.processor import Processor
from gateway.process.rejects import RejectLog
from gateway.process.rules.engine import Outcome, RuleEngine
from gateway.source.ingest import Ingest
from gateway.store.buffer import Budget, DiskBuffer
from gateway.store.lanes import LaneWriter


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


def _rig(tmp_path: Path, decoder: Decoder, rules: RuleEngine,
         batcher: Batcher) -> tuple[Accounting, DiskBuffer, Ingest, Processor]:
    """The real processing parts around the given decoder, rules and batcher, on a real buffer."""
    buffer = DiskBuffer(tmp_path / "buf", {"telemetry": Budget(10**9), "control": Budget(10**9)})
    buffer.open()
    acc = Accounting(buffered_fn=lambda: buffer.readings("telemetry"), pending_fn=batcher.__len__)
    lanes = LaneWriter(buffer, CloudTopics("gw"), acc, compression="zlib", level=6, on_written=lambda: None)
    pipeline = Pipeline(decoder, rules, batcher, acc, RejectLog(), on_batch=lanes.write_batch,
                        on_control=lanes.write_control)
    ingest = Ingest(100, lambda topic: None)
    return acc, buffer, ingest, Processor(ingest, pipeline, lanes, acc)


async def test_a_failing_message_is_counted_as_internal_error_and_the_identity_holds(tmp_path: Path) -> None:
    acc, buffer, ingest, processor = _rig(tmp_path, BuggyDecoder(TopicsSection(), DecodeSection()),
                                          BuggyRules([]), Batcher(1000, 10**6, 60))
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


class BuggyBatcher(Batcher):
    """A real batcher whose final flush takes the open batch and then fails: a stand-in for a bug
    between taking readings out of memory and writing them."""

    def flush(self) -> list[Reading] | None:
        super().flush()
        raise KeyError("a bug")


async def test_readings_a_failing_step_took_out_of_the_open_batch_are_dropped_as_internal_error(
        tmp_path: Path) -> None:
    batcher = BuggyBatcher(1000, 10**6, 60)
    acc, buffer, ingest, processor = _rig(tmp_path, Decoder(TopicsSection(), DecodeSection()), RuleEngine([]),
                                          batcher)
    ingest.offer("devices/d1/telemetry", json.dumps({"a": 1, "b": 2, "c": 3}).encode())
    stop = asyncio.Event()
    stop.set()
    await processor.run(stop)
    assert processor.internal_errors == 1 and len(batcher) == 0
    assert acc.readings_in == 3 and acc.dropped[INTERNAL_ERROR] == 3 and acc.balance() == 0
    buffer.close()
