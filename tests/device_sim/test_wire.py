"""Pure pieces of the wire contract: payloads, topics, device ids, command parsing, replay files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgpack
import pytest

from device_sim import payloads, topics
from device_sim.commands import parse_command, response
from device_sim.errors import CommandError, SimConfigError
from device_sim.replay import group_rows, load_csv, parse_ts, parse_value


def test_json_payload_is_compact_and_writes_nan_token() -> None:
    assert payloads.telemetry(1700000000123, 7, {"temperature": 21.37, "humidity": 45.2}, "json") == (
        b'{"ts":1700000000123,"seq":7,"temperature":21.37,"humidity":45.2}')
    assert payloads.telemetry(1, 1, {"t": float("nan")}, "json") == b'{"ts":1,"seq":1,"t":NaN}'


def test_msgpack_payload_round_trips() -> None:
    obj = msgpack.unpackb(payloads.telemetry(1700000000123, 7, {"temperature": 21.37, "s": "ERR"}, "msgpack"))
    assert obj == {"ts": 1700000000123, "seq": 7, "temperature": 21.37, "s": "ERR"}


def test_bare_payloads() -> None:
    assert payloads.bare(21.37) == b"21.37"
    assert payloads.bare(1480) == b"1480"
    assert payloads.bare(float("nan")) == b"nan"
    assert payloads.bare(1e308) == b"1e+308"
    assert payloads.bare("ERR") == b"ERR"


def test_device_ids_and_prefix_rules() -> None:
    assert topics.device_ids("dev-", 3) == ["dev-0001", "dev-0002", "dev-0003"]
    assert topics.device_ids("", 1) == ["0001"]
    for bad in ("a/b", "x+", "#", "sp ace", "é"):
        with pytest.raises(SimConfigError):
            topics.device_ids(bad, 1)
    with pytest.raises(SimConfigError, match="too long"):
        topics.device_ids("x" * 61, 1)
    assert topics.device_ids("x" * 60, 1) == ["x" * 60 + "0001"]


def test_topic_templates() -> None:
    topics.check_template("site/a/{device_id}/data")
    for bad in ("devices/telemetry", "devices/{id}/t", "devices/+/{device_id}", "$SYS/{device_id}", "{device_id"):
        with pytest.raises(SimConfigError):
            topics.check_template(bad)
    assert topics.telemetry_topic(topics.DEFAULT_TEMPLATE, "d1") == "devices/d1/telemetry"
    assert topics.telemetry_topic(topics.DEFAULT_TEMPLATE, "d1", "temp") == "devices/d1/telemetry/temp"
    assert topics.telemetry_topic("x/{device_id}/{metric}", "d1", "temp") == "x/d1/temp"
    assert topics.parse_command_topic("devices/d1/commands/ping") == ("d1", "ping")
    assert topics.parse_command_topic("devices/d1/commands") is None
    assert topics.parse_command_topic("devices/d1/responses/x") is None


def test_parse_command() -> None:
    cmd = parse_command("set_rate", b'{"id": "c1", "args": {"rate_hz": 2}, "expires": 2000000000}')
    assert (cmd.id, cmd.args, cmd.expires, cmd.expired(1e9)) == ("c1", {"rate_hz": 2}, 2e9, False)
    assert parse_command("ping", b'{"id": 5}').args == {}
    assert parse_command("ping", b'{"id": "x", "expires": 10}').expired(11)
    for payload, has_id in [(b"nope", False), (b"[1]", False), (b'{"args": {}}', False), (b'{"id": ""}', False),
                            (b'{"id": "a", "args": 3}', True), (b'{"id": "a", "expires": "soon"}', True),
                            (b"\xff\xfe", False)]:
        with pytest.raises(CommandError) as info:
            parse_command("ping", payload)
        assert (info.value.command_id is not None) == has_id, payload
    assert response("a", "ok") == {"id": "a", "status": "ok"}
    assert json.loads(payloads.encode_json(response(3, "error", {"reason": "r"}))) == {
        "id": 3, "status": "error", "result": {"reason": "r"}}


def test_replay_csv_parsing(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("device,metric,ts,value\n"
                    "d2,temperature,1700000001,21.5\n"
                    "d1,temperature,1700000000.5,20\n"
                    "d1,humidity,1700000000.5,40.1\n"
                    "d1,temperature,1700000002000,ERR\n")
    rows = load_csv(path)
    groups = group_rows(rows)
    assert [(g.device, g.ts_ms, g.values) for g in groups] == [
        ("d1", 1700000000500, {"temperature": 20, "humidity": 40.1}),
        ("d2", 1700000001000, {"temperature": 21.5}),
        ("d1", 1700000002000, {"temperature": "ERR"}),
    ]
    assert parse_ts("1700000000123") == 1700000000123
    nan = parse_value("nan")
    assert isinstance(nan, float) and math.isnan(nan)
    path.write_text("device,metric,value\nd1,t,1\n")
    with pytest.raises(SimConfigError, match="missing: ts"):
        load_csv(path)
    path.write_text("device,metric,ts,value\nd/1,t,1,1\n")
    with pytest.raises(SimConfigError, match=r"r.csv:2: bad device id"):
        load_csv(path)
    path.write_text("device,metric,ts,value\nd1,t,yesterday,1\n")
    with pytest.raises(SimConfigError, match="bad ts"):
        load_csv(path)
