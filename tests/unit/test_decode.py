from __future__ import annotations

import json

import msgpack
import pytest

from bridge.protocol.model import Reading
from gateway.config import DecodeSection, TopicsSection
from gateway.process import decode as d

NOW = 1_700_000_000_000


def decoder(**limits: object) -> d.Decoder:
    return d.Decoder(TopicsSection(), DecodeSection(**limits))


def test_json_object_with_several_metrics_ts_in_ms_and_seq() -> None:
    msg = decoder().decode("devices/dev-1/telemetry", b'{"ts": 1700000000500, "seq": 9, "t": 21.5, "h": 40}', NOW)
    assert isinstance(msg, d.Telemetry)
    assert msg.readings == [Reading("dev-1", "t", NOW + 500, 21.5, 9), Reading("dev-1", "h", NOW + 500, 40.0, 9)]


def test_ts_in_seconds_and_missing_ts() -> None:
    sec = decoder().decode("devices/a/telemetry", b'{"ts": 1700000001.25, "t": 1}', NOW)
    assert isinstance(sec, d.Telemetry) and sec.readings[0].ts_ms == NOW + 1250
    none = decoder().decode("devices/a/telemetry", b'{"t": 1}', NOW)
    assert isinstance(none, d.Telemetry) and none.readings[0].ts_ms == NOW


def test_msgpack_object() -> None:
    payload = msgpack.packb({"ts": NOW, "seq": 1, "temp": 3.25})
    msg = decoder().decode("devices/a/telemetry", payload, NOW)
    assert isinstance(msg, d.Telemetry) and msg.readings == [Reading("a", "temp", NOW, 3.25, 1)]


def test_bare_number_on_metric_topic() -> None:
    msg = decoder().decode("devices/a/telemetry/temp", b" 21.75\n", NOW)
    assert isinstance(msg, d.Telemetry) and msg.readings == [Reading("a", "temp", NOW, 21.75, None)]


def test_events_and_responses() -> None:
    ev = decoder().decode("devices/a/events", b'{"event": "low_battery", "ts": 1700000000}', NOW)
    assert isinstance(ev, d.DeviceEvent) and ev.body["event"] == "low_battery" and ev.ts_ms == NOW
    rs = decoder().decode("devices/a/responses", json.dumps({"id": "c1", "status": "ok"}).encode(), NOW)
    assert isinstance(rs, d.DeviceResponse) and rs.body == {"id": "c1", "status": "ok"}


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("devices/a/telemetry", b"x" * 70000, d.TOO_LARGE),
        ("other/a/telemetry", b"{}", d.UNKNOWN_TOPIC),
        ("devices//telemetry", b'{"t": 1}', d.BAD_DEVICE_ID),
        ("devices/" + "a" * 65 + "/telemetry", b'{"t": 1}', d.BAD_DEVICE_ID),
        ("devices/a b/telemetry", b'{"t": 1}', d.BAD_DEVICE_ID),
        ("devices/a/telemetry", b"{not json", d.INVALID_JSON),
        ("devices/a/telemetry", b"\xff\xfe", d.INVALID_JSON),
        ("devices/a/telemetry", b"\x81\xa1", d.INVALID_MSGPACK),
        ("devices/a/telemetry", b"[1, 2]", d.NOT_OBJECT),
        ("devices/a/telemetry", b"21.5", d.NOT_OBJECT),
        ("devices/a/telemetry", b'{"ts": "yesterday", "t": 1}', d.BAD_TS),
        ("devices/a/telemetry", b'{"ts": 1, "t": 1}', d.TS_OUT_OF_WINDOW),
        ("devices/a/telemetry", b'{"ts": 4000000000000, "t": 1}', d.TS_OUT_OF_WINDOW),
        ("devices/a/telemetry", b'{"seq": -1, "t": 1}', d.BAD_SEQ),
        ("devices/a/telemetry", b'{"seq": 1.5, "t": 1}', d.BAD_SEQ),
        ("devices/a/telemetry", b'{"seq": 9223372036854775808, "t": 1}', d.BAD_SEQ),
        ("devices/a/telemetry", b'{"ts": 1700000000000}', d.NO_METRICS),
        ("devices/a/telemetry/t", b"warm", d.NOT_NUMERIC),
        ("devices/a/telemetry/t", b"NaN", d.NAN),
        ("devices/a/telemetry/t", b"inf", d.NAN),
        ("devices/a/telemetry/b%d", b"1", d.BAD_METRIC_NAME),
        ("devices/a/events", b"[]", d.NOT_OBJECT),
        ("devices/a/responses", b"nope", d.INVALID_JSON),
    ],
)
def test_whole_message_rejections(topic: str, payload: bytes, reason: str) -> None:
    msg = decoder().decode(topic, payload, NOW)
    assert isinstance(msg, d.Rejection), msg
    assert msg.reason == reason


def test_too_many_metrics() -> None:
    payload = json.dumps({f"m{i}": i for i in range(5)}).encode()
    msg = decoder(max_metrics_per_message=4).decode("devices/a/telemetry", payload, NOW)
    assert isinstance(msg, d.Rejection) and msg.reason == d.TOO_MANY_METRICS


@pytest.mark.parametrize(
    ("field", "reason"),
    [('"warm"', d.NOT_NUMERIC), ("null", d.NOT_NUMERIC), ("true", d.NOT_NUMERIC), ("{}", d.NOT_NUMERIC),
     ("NaN", d.NAN), ("1e999", d.NAN), ("-Infinity", d.NAN)],
)
def test_bad_metric_values_reject_only_that_metric(field: str, reason: str) -> None:
    msg = decoder().decode("devices/a/telemetry", f'{{"good": 1, "bad": {field}}}'.encode(), NOW)
    assert isinstance(msg, d.Telemetry)
    assert [r.metric for r in msg.readings] == ["good"]
    assert [r.reason for r in msg.rejections] == [reason]


def test_bad_metric_name_in_object() -> None:
    msg = decoder().decode("devices/a/telemetry", b'{"ok": 1, "a/b": 2, "+": 3}', NOW)
    assert isinstance(msg, d.Telemetry)
    assert [r.reason for r in msg.rejections] == [d.BAD_METRIC_NAME, d.BAD_METRIC_NAME]


def test_out_of_window_ts_can_be_clamped() -> None:
    msg = decoder(out_of_window="clamp").decode("devices/a/telemetry", b'{"ts": 1, "t": 1}', NOW)
    assert isinstance(msg, d.Telemetry) and msg.readings[0].ts_ms == NOW


def test_integer_beyond_64_bits_is_rejected_alone() -> None:
    msg = decoder().decode("devices/a/telemetry", ('{"t": ' + "9" * 400 + ', "u": 1}').encode(), NOW)
    assert isinstance(msg, d.Telemetry) and msg.rejections[0].reason == d.INT_OUT_OF_RANGE
    assert [r.value for r in msg.readings] == [1.0]


def test_subscriptions_cover_the_contract() -> None:
    assert decoder().subscriptions() == [
        "devices/+/telemetry", "devices/+/telemetry/+", "devices/+/events", "devices/+/responses",
    ]


def test_event_with_msgpack_extension_types_becomes_plain_json() -> None:
    import datetime

    from bridge.protocol.records import Event, Stamp, encode_control

    payload = msgpack.packb({"event": "x", "at": msgpack.Timestamp(1700000000), "big": 2**70, "raw": b"\x01",
                             "nan": float("nan"), "nested": {"t": datetime.datetime(2024, 1, 1)}},
                            datetime=False, default=str)
    ev = decoder().decode("devices/a/events", payload, NOW)
    assert isinstance(ev, d.DeviceEvent)
    encode_control(Event(ev.device, ev.ts_ms, ev.body), Stamp("gw", 1))  # must not raise
    assert ev.body["big"] == str(2**70) and ev.body["raw"] == "01" and ev.body["nan"] is None
    assert isinstance(ev.body["at"], str)


@pytest.mark.parametrize(("topic", "reason"), [
    ("devices/a/b/telemetry", d.UNKNOWN_TOPIC),  # an id with '/' spans two levels: no topic of the contract
    ("devices/a/b/telemetry/t", d.UNKNOWN_TOPIC),
    ("devices//telemetry", d.BAD_DEVICE_ID),
    ("devices/a b/telemetry", d.BAD_DEVICE_ID),
    ("devices/a+/telemetry", d.BAD_DEVICE_ID),
    ("devices/.a/telemetry", d.BAD_DEVICE_ID),
    ("devices/" + "x" * 65 + "/telemetry", d.BAD_DEVICE_ID),
])
def test_bad_ids_are_rejected_with_the_reason_the_readme_names(topic: str, reason: str) -> None:
    msg = decoder().decode(topic, b'{"t": 1}', NOW)
    assert isinstance(msg, d.Rejection) and msg.reason == reason
