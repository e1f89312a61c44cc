"""The control records: exact wire bytes, round trips and named rejections for every kind."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.protocol.errors import CodecError, InvalidRecord
from bridge.protocol.records import (
    Alert,
    ConfigStatus,
    ControlRecord,
    Event,
    FileStatus,
    Response,
    Stamp,
    Stamped,
    decode_control,
    encode_control,
    parse_control,
    to_wire,
)
from bridge.protocol.topics import CONTROL_TOPICS, KIND_OF_TOPIC, CloudTopics

STAMP = Stamp("gw-01", 12, "5f3a9c01d2e4b687")
REASONS = {"malformed record", "bad gateway id", "bad stream id", "unknown kind"}


def test_the_wire_bytes_are_those_of_the_protocol_page() -> None:
    alert = Alert("room-1", "temperature", "max", "raised", 30.4, 30.0, 1700000000000, "room temperature")
    assert encode_control(alert, STAMP) == (
        b'{"device":"room-1","gw":"gw-01","kind":"alert","level":"max","metric":"temperature",'
        b'"rule":"room temperature","seq":12,"state":"raised","stream":"5f3a9c01d2e4b687","threshold":30.0,'
        b'"ts_ms":1700000000000,"value":30.4}')
    response = Response("room-1", "set_rate", "c-42", "ok", {"rate_hz": 5.0}, "device", 3.12)
    assert encode_control(response, Stamp("gw-01", 13, "5f3a9c01d2e4b687")) == (
        b'{"command":"set_rate","device":"room-1","gw":"gw-01","id":"c-42","kind":"response",'
        b'"result":{"rate_hz":5.0},"rtt_ms":3.12,"seq":13,"source":"device","status":"ok",'
        b'"stream":"5f3a9c01d2e4b687"}')
    status = ConfigStatus(7, "applied", [], 7)
    assert encode_control(status, Stamp("gw-01", 31, "5f3a9c01d2e4b687")) == (
        b'{"current_version":7,"errors":[],"gw":"gw-01","kind":"config_status","seq":31,"status":"applied",'
        b'"stream":"5f3a9c01d2e4b687","version":7}')
    event = Event("room-1", 1700000000000, {"door": "open"})
    assert encode_control(event, STAMP) == (
        b'{"device":"room-1","event":{"door":"open"},"gw":"gw-01","kind":"event","seq":12,'
        b'"stream":"5f3a9c01d2e4b687","ts_ms":1700000000000}')


def test_records_are_strict_json() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        encode_control(Event("d", 1, {"x": math.nan}), STAMP)
    with pytest.raises(CodecError):
        decode_control(b"[1]")
    with pytest.raises(CodecError):
        decode_control(b"[" * 100_000)  # too deep for the JSON parser: a codec error, not a RecursionError


def test_every_kind_has_one_topic() -> None:
    topics = CloudTopics("gw-01")
    assert {cls.kind for cls in (Alert, Event, Response, ConfigStatus, FileStatus)} == set(CONTROL_TOPICS)
    assert [topics.control(kind) for kind in CONTROL_TOPICS] == [
        topics.alerts, topics.events, topics.responses, topics.config_status, topics.file_status]
    assert topics.file_status == "edge/gw-01/files/status"
    assert topics.config_status == "edge/gw-01/config/status"
    assert {KIND_OF_TOPIC[t] for t in CONTROL_TOPICS.values()} == set(CONTROL_TOPICS)


def test_an_alert_value_beyond_the_doubles_is_a_named_rejection() -> None:
    wire = to_wire(Alert("d", "m", "max", "raised", 1.0, 0.5, 1, "r"), STAMP)
    with pytest.raises(InvalidRecord) as err:
        parse_control({**wire, "value": 10**400})
    assert err.value.reason == "malformed record"
    big = parse_control({**wire, "value": 2**64 - 1}).record
    assert big == Alert("d", "m", "max", "raised", 2**64 - 1, 0.5, 1, "r")


# ---------------------------------------------------------------- properties

ids = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,15}", fullmatch=True)
int64 = st.integers(-(2**63), 2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
json_leaf = st.none() | st.booleans() | int64 | finite | st.text(max_size=8)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
stamps = st.builds(Stamp, ids, st.integers(0, 2**63 - 1), st.just("") | ids)
alerts = st.builds(Alert, ids, ids, st.sampled_from(["max", "min"]), st.sampled_from(["raised", "cleared"]),
                   finite | st.integers(-(2**63), 2**64 - 1), finite, int64, st.text(min_size=1, max_size=20))
events = st.builds(Event, ids, int64, st.dictionaries(st.text(max_size=5), json_value, max_size=4))
responses = st.builds(Response, st.just("") | ids, st.none() | ids, st.none() | ids | int64,
                      st.sampled_from(["ok", "error", "rejected", "expired", "undeliverable"]), json_value,
                      st.sampled_from(["device", "gateway"]), st.none() | finite)
statuses = st.builds(ConfigStatus, st.none() | st.integers(1, 2**53 - 1),
                     st.sampled_from(["applied", "rejected", "stale"]),
                     st.lists(st.fixed_dictionaries({"key": st.text(max_size=10), "reason": st.text(max_size=10)}),
                              max_size=3), st.integers(0, 2**53 - 1))


@pytest.mark.parametrize("records", [alerts, events, responses, statuses], ids=["alert", "event", "response",
                                                                                 "config_status"])
def test_record_to_wire_to_record_is_the_same_record(records: st.SearchStrategy[ControlRecord]) -> None:
    @given(records, stamps)
    def round_trip(record: ControlRecord, stamp: Stamp) -> None:
        assert parse_control(decode_control(encode_control(record, stamp))) == Stamped(stamp, record)

    round_trip()


def _mutated(wire: dict[str, Any], changes: dict[str, Any], drop: list[str]) -> dict[str, Any]:
    out = {**wire, **changes}
    for key in drop:
        out.pop(key, None)
    return out


@pytest.mark.parametrize("records", [alerts, events, responses, statuses], ids=["alert", "event", "response",
                                                                                 "config_status"])
def test_any_wire_object_is_a_record_or_a_named_rejection(records: st.SearchStrategy[ControlRecord]) -> None:
    keys = st.sampled_from(["gw", "seq", "stream", "kind", "device", "metric", "level", "state", "value",
                            "threshold", "ts_ms", "rule", "event", "status", "id", "version"])

    @given(records, stamps, st.dictionaries(keys, json_value | st.integers(), max_size=3), st.lists(keys, max_size=2))
    def never_unexpected(record: ControlRecord, stamp: Stamp, changes: dict[str, Any], drop: list[str]) -> None:
        wire = _mutated(to_wire(record, stamp), changes, drop)
        try:
            parsed = parse_control(json.loads(json.dumps(wire)))
        except InvalidRecord as exc:
            reason = exc.reason
        else:
            reason = ""
            assert parsed.stamp.gateway == wire["gw"] and parsed.kind == wire["kind"]
        assert reason == "" or reason in REASONS

    never_unexpected()


@pytest.mark.parametrize("where", ["rule", "metric", "device", "event"])
def test_a_lone_surrogate_anywhere_is_a_codec_error_not_a_storage_failure(where: str) -> None:
    """JSON can spell text no UTF-8 store can hold (``\\ud800``); the sink must reject it as invalid
    (counted, acknowledged) instead of failing every transaction it is in."""
    record: dict[str, Any] = {"v": 1, "kind": "alert", "gw": "gw-1", "seq": 1, "device": "d", "metric": "temp",
                              "level": "warn", "state": "raised", "value": 1.0, "threshold": 0.5, "ts_ms": 1,
                              "rule": "r", "event": {"k": "v"}}
    record[where] = {"nested": "\ud800"} if where == "event" else "x\ud800"
    payload = json.dumps(record).encode()  # ASCII: the surrogate is an escape, as a hostile peer sends it
    with pytest.raises(CodecError, match="not valid Unicode"):
        decode_control(payload)
