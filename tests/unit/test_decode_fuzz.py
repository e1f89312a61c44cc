"""Every payload ends in the accounting: decode never raises, whatever arrives (JSON, msgpack or
bytes), and each message becomes readings the batch can carry exactly or named rejections.

The default hypothesis profile keeps this quick; ``EDGE_HYPOTHESIS_PROFILE=fuzz`` runs a long
campaign (1M examples per property). Set ``EDGE_FUZZ_COUNTS`` to a file path to get the outcome
counts of the run written there as JSON (every 10,000 examples and at the end)."""

from __future__ import annotations

import atexit
import json
import math
import os
from collections import Counter
from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from bridge.protocol.codec import carried, decode_batch, encode_batch
from bridge.protocol.model import Reading
from gateway.config import DecodeSection, RuleSpec, TopicsSection
from gateway.observe.accounting import Accounting
from gateway.process import decode as d
from gateway.process.batcher import Batcher
from gateway.process.pipeline import Pipeline
from gateway.process.rejects import RejectLog
from gateway.process.rules.engine import RuleEngine

NOW = 1_700_000_000_000
OUTCOMES: Counter[str] = Counter()


def _dump_counts() -> None:
    path = os.environ.get("EDGE_FUZZ_COUNTS")
    if path and OUTCOMES:
        with open(path, "w") as f:
            json.dump(dict(OUTCOMES.most_common()), f, indent=1)


atexit.register(_dump_counts)

ids = st.one_of(st.sampled_from(["dev-1", "d_2", "..", ".", "a/b", "+", "#", "", "x" * 65]), st.text(max_size=70))
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.integers(),
    st.floats(), st.sampled_from([-0.0, 1e308, -1e308, 5e-324, 1e306, -1e306, 2**53, 2**64, -(2**63) - 1]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20), st.binary(max_size=10))
json_values = st.recursive(st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20)),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=30)
packable_keys = st.one_of(st.text(max_size=10), st.integers(min_value=-(2**63), max_value=2**64 - 1),
                          st.binary(max_size=5), st.booleans(), st.none(), st.floats(allow_nan=False),
                          st.tuples(st.integers(0, 3)), st.just(("ts",)))
msgpack_values = st.recursive(st.one_of(st.none(), st.booleans(), st.text(max_size=20), st.binary(max_size=10),
                                        st.floats(), st.integers(min_value=-(2**63), max_value=2**64 - 1)),
                              lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(packable_keys, inner, max_size=4)),
                              max_leaves=30)
metric_keys = st.one_of(st.sampled_from(["ts", "seq", "t", "h", "..", "a/b"]), st.text(max_size=12))
json_telemetry = st.dictionaries(metric_keys, st.one_of(numbers, json_values), max_size=6)
msgpack_telemetry = st.dictionaries(metric_keys, st.one_of(numbers, scalars, msgpack_values), max_size=6)


def _json(obj: Any) -> bytes:
    try:
        return json.dumps(obj).encode()
    except ValueError:  # an integer with more digits than Python will print
        return b"{}"


def _msgpack(obj: Any) -> bytes:
    try:
        return bytes(msgpack.packb(obj, use_bin_type=True))
    except OverflowError:  # an integer msgpack cannot hold
        return b"\x80"


def _deep(depth: int, kind: str) -> bytes:
    if kind == "json_list":
        return b"[" * depth + b"]" * depth
    if kind == "json_obj":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"\x81\xa1a" * depth + b"\x01"  # msgpack maps nested ``depth`` deep


payloads = st.one_of(
    st.binary(max_size=200),
    json_telemetry.map(_json),
    json_values.map(_json),
    msgpack_values.map(_msgpack),
    st.dictionaries(packable_keys, msgpack_values, max_size=5).map(_msgpack),
    msgpack_telemetry.map(_msgpack),
    st.builds(_deep, st.integers(1, 60_000), st.sampled_from(["json_list", "json_obj", "msgpack"])),
    numbers.map(lambda v: repr(v).encode()),
)
kinds = st.sampled_from(["telemetry", "telemetry", "telemetry", "events", "responses", "telemetry/t",
                         "telemetry/h", "telemetry/..", "commands/x"])
topics = st.one_of(
    st.builds(lambda dev, kind: f"devices/{dev}/{kind}", st.sampled_from(["dev-1", "d_2"]), kinds),
    st.builds(lambda dev, kind: f"devices/{dev}/{kind}", st.sampled_from(["dev-1", "d_2"]), kinds),
    st.builds(lambda dev, kind: f"devices/{dev}/{kind}", ids, kinds),
    st.text(max_size=40),
)


def _pipeline(acc: Accounting, batches: list[list[Reading]]) -> Pipeline:
    rules = RuleEngine([RuleSpec.model_validate({"name": "r", "metrics": "t", "valid": {"min": -1e300},
                                                 "alert": {"max": 30.0, "hysteresis": 0.5},
                                                 "deadband": {"abs": 0.1}})])
    decoder = d.Decoder(TopicsSection(), DecodeSection(max_past_s=10**12, max_future_s=10**12))
    return Pipeline(decoder, rules, Batcher(3, 10**6, 60), acc, RejectLog(), on_batch=batches.append,
                    on_control=lambda record: None)


DECODER = d.Decoder(TopicsSection(), DecodeSection(max_payload_bytes=1 << 20))


@given(topics, payloads)
def test_decode_never_raises_and_every_reading_is_carried(topic: str, payload: bytes) -> None:
    _check_decode(topic, payload)


@given(st.one_of(json_telemetry.map(_json), msgpack_telemetry.map(_msgpack), payloads))
def test_telemetry_payloads_never_raise_and_every_reading_is_carried(payload: bytes) -> None:
    _check_decode("devices/dev-1/telemetry", payload)


def _check_decode(topic: str, payload: bytes) -> None:
    decoder = DECODER
    OUTCOMES["examples"] += 1
    if OUTCOMES["examples"] % 10_000 == 0:  # a long run shows its progress in the counts file
        _dump_counts()
    msg = decoder.decode(topic, payload, NOW)
    OUTCOMES[type(msg).__name__ if not isinstance(msg, d.Rejection) else f"rejected:{msg.reason}"] += 1
    assert isinstance(msg, (d.Telemetry, d.DeviceEvent, d.DeviceResponse, d.Rejection))
    if isinstance(msg, d.Telemetry):
        for rej in msg.rejections:
            OUTCOMES[f"reading_rejected:{rej.reason}"] += 1
        for r in msg.readings:
            OUTCOMES["reading"] += 1
            assert carried(r.value) is not None and repr(carried(r.value)) == repr(r.value)
            assert 0 <= r.ts_ms < 2**53 and (r.seq is None or 0 <= r.seq < 2**63)
        out = decode_batch(encode_batch("g", 1, msg.readings, stream="s", created_ms=0)).readings
        assert sorted(map(repr, out)) == sorted(map(repr, msg.readings))
    elif isinstance(msg, (d.DeviceEvent, d.DeviceResponse)):
        json.dumps(msg.body, allow_nan=False)  # goes up as a strict JSON control record


@given(st.lists(st.tuples(topics, payloads), max_size=8))
def test_every_message_ends_in_the_accounting(messages: list[tuple[str, bytes]]) -> None:
    acc = Accounting()
    batches: list[list[Reading]] = []
    pipeline = _pipeline(acc, batches)
    acc.pending_fn = lambda: len(pipeline.batcher)
    for topic, payload in messages:
        pipeline.handle(topic, payload, NOW)
    pipeline.flush()
    for batch in batches:  # every closed batch encodes (cannot fail) and is "delivered" here
        env = encode_batch("g", 1, batch, stream="s", created_ms=0)
        acc.delivered += len(decode_batch(env).readings)
    assert acc.balance() == 0


def test_known_escapes_are_rejections_now() -> None:
    decoder = d.Decoder(TopicsSection(), DecodeSection())
    cases = {
        b"[" * 50_000 + b"]" * 50_000: (d.TOO_LARGE, d.TOO_DEEP),
        b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}": (d.NOT_NUMERIC, d.TOO_DEEP),
        b'{"ts": -1e306, "a": 1}': (d.BAD_TS,),
        msgpack.packb({(1, 2): 3}): (d.INVALID_MSGPACK,),
        b"\x81\x81\x01\x02\x03": (d.INVALID_MSGPACK,),
    }
    for payload, reasons in cases.items():
        msg = decoder.decode("devices/d1/telemetry", payload, NOW)
        reason = msg.rejections[0].reason if isinstance(msg, d.Telemetry) else getattr(msg, "reason", None)
        assert reason in reasons, (payload[:30], msg)
    neg = decoder.decode("devices/d1/telemetry", b'{"a": -0.0}', NOW)
    assert isinstance(neg, d.Telemetry) and math.copysign(1.0, neg.readings[0].value) == -1.0
    assert decoder.decode("devices/../telemetry", b'{"a": 1}', NOW) == d.Rejection(
        d.BAD_DEVICE_ID, "device id '..' in topic 'devices/../telemetry'")
    deep_event = decoder.decode("devices/d1/events", b'{"e": ' + b"[" * 40 + b"]" * 40 + b"}", NOW)
    assert isinstance(deep_event, d.Rejection) and deep_event.reason == d.TOO_DEEP
