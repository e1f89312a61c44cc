"""The ``device-sim`` CLI: argument checking, exit codes, and real runs against the embedded broker.

CliRunner.invoke blocks, and the fixture broker lives on the test's event loop, so runs that need
the broker are invoked in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner, Result

from device_sim.cli import main
from gateway.source.broker import EmbeddedBroker
from tests.device_sim.helpers import devices_watcher
from tests.support import eventually, free_port

SCRIPT = Path(sys.executable).parent / "device-sim"
EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "profiles.example.toml"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


async def invoke_async(*args: str) -> Result:
    return await asyncio.to_thread(invoke, *args)


@pytest.mark.parametrize("args", [
    ["run", "--devices", "0"],
    ["run", "--rate-hz", "0"],
    ["run", "--qos", "3"],
    ["run", "--format", "xml"],
    ["run", "--duration", "5", "--count", "5"],
    ["run", "--id-prefix", "bad/prefix"],
    ["run", "--id-prefix", "x" * 70],
    ["run", "--profile", "no-such-profile"],
    ["run", "--topic-template", "devices/telemetry"],
    ["run", "--topic-template", "t/{device_id}/{metric}"],
    ["run", "--insecure"],
    ["run", "--jitter", "2"],
    ["run", "--cafile", "/no/such/file"],
    ["publish", "--device", "d1"],
    ["publish", "--device", "bad/id", "--metric", "t", "--value", "1"],
    ["publish", "--device", "d1", "--metric", "t"],
    ["publish", "--device", "d1", "--metric", "t", "--value", "1", "--event", "x"],
    ["replay", "/no/such/file.csv"],
    ["nope"],
])
def test_bad_arguments_exit_2(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Error" in result.output


def test_unreachable_broker_exits_1_with_reason() -> None:
    port = free_port()
    result = invoke("run", "--port", str(port), "--count", "1")
    assert result.exit_code == 1
    assert f"cannot connect to 127.0.0.1:{port}: Connection refused" in result.output
    result = invoke("publish", "--port", str(port), "--device", "d1", "--metric", "t", "--value", "1")
    assert result.exit_code == 1 and "Connection refused" in result.output


async def test_mqtt5_against_the_3_1_1_only_broker_exits_1(amqtt_broker: EmbeddedBroker) -> None:
    result = await invoke_async("run", "-p", str(amqtt_broker.address.port), "--count", "1",
                                "--mqtt-version", "5")
    assert result.exit_code == 1
    assert "broker refused: Unsupported protocol version" in result.output


def test_profiles_lists_builtins_and_file() -> None:
    result = invoke("profiles")
    assert result.exit_code == 0
    for name in ("room", "freezer", "motor", "power", "gps"):
        assert name in result.output
    result = invoke("profiles", "--file", str(EXAMPLE), "-v")
    assert result.exit_code == 0 and "greenhouse" in result.output and "soil_moisture" in result.output


def test_help_texts() -> None:
    for command in ([], ["run"], ["publish"], ["replay"], ["profiles"]):
        result = invoke(*command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output


async def test_run_json_summary(amqtt_broker: EmbeddedBroker) -> None:
    port = str(amqtt_broker.address.port)
    result = await invoke_async("run", "-p", port, "--devices", "3", "--count", "4", "--rate-hz", "40",
                                "--seed", "1", "--json", "--profile", "motor", "--profile", f"{EXAMPLE}#tank")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["sent"] == 12 and summary["failed"] == 0 and summary["reconnects"] == 0
    assert summary["profiles"] == ["motor", "tank"]
    assert summary["requested_msg_per_s"] == 120.0
    assert summary["per_device"] == {f"dev-000{n}": {"sent": 4, "failed": 0, "last_seq": 4} for n in (1, 2, 3)}
    for key in ("elapsed_s", "achieved_msg_per_s", "commands_answered", "rate_met"):
        assert key in summary


async def test_run_text_summary(amqtt_broker: EmbeddedBroker) -> None:
    result = await invoke_async("run", "-p", str(amqtt_broker.address.port), "--count", "2", "--rate-hz", "50")
    assert result.exit_code == 0, result.output
    assert "sent       2 messages" in result.output and "requested" in result.output


async def test_publish_reading_and_event(amqtt_broker: EmbeddedBroker) -> None:
    addr = amqtt_broker.address
    collector = await devices_watcher(addr.host, addr.port)
    try:
        port = str(addr.port)
        result = await invoke_async("publish", "-p", port, "--device", "d1", "--metric", "temperature",
                                    "--value", "21.5", "--seq", "9", "--ts", "1700000000123")
        assert result.exit_code == 0, result.output
        assert 'devices/d1/telemetry {"ts":1700000000123,"seq":9,"temperature":21.5}' in result.output
        result = await invoke_async("publish", "-p", port, "--device", "d1", "--metric", "temperature",
                                    "--value", "21.5", "--metric", "door", "--value", "open", "--format", "bare")
        assert result.exit_code == 0, result.output
        result = await invoke_async("publish", "-p", port, "--device", "d1", "--metric", "t", "--value", "1",
                                    "--format", "msgpack")
        assert result.exit_code == 0, result.output
        result = await invoke_async("publish", "-p", port, "--device", "d1", "--event", "low_battery",
                                    "--detail", '{"battery_pct": 9}')
        assert result.exit_code == 0, result.output
        await eventually(lambda: len(collector.on("devices/d1/events")) == 1
                         and len(collector.on("devices/d1/telemetry")) == 2)
        assert collector.on("devices/d1/telemetry/temperature") == [b"21.5"]
        assert collector.on("devices/d1/telemetry/door") == [b"open"]
        assert msgpack.unpackb(collector.on("devices/d1/telemetry")[1])["t"] == 1
        event = json.loads(collector.on("devices/d1/events")[0])
        assert event["event"] == "low_battery" and event["detail"] == {"battery_pct": 9}
        assert isinstance(event["ts"], int)
    finally:
        await asyncio.to_thread(collector.stop)


async def test_replay_fast(amqtt_broker: EmbeddedBroker, tmp_path: Path) -> None:
    addr = amqtt_broker.address
    csv_file = tmp_path / "rec.csv"
    csv_file.write_text("device,metric,ts,value\n"
                        + "".join(f"d{n % 2},temperature,{1700000000000 + n * 1000},{20 + n / 10}\n"
                                  for n in range(20)))
    collector = await devices_watcher(addr.host, addr.port)
    try:
        result = await invoke_async("replay", str(csv_file), "-p", str(addr.port), "--fast", "--json")
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["sent"] == 20 and summary["failed"] == 0
        assert summary["per_device"] == {"d0": 10, "d1": 10}
        await eventually(lambda: len(collector.on("devices/d1/telemetry")) == 10)
        d1 = [json.loads(p) for p in collector.on("devices/d1/telemetry")]
        assert [m["seq"] for m in d1] == list(range(1, 11))
        assert d1[0] == {"ts": 1700000001000, "seq": 1, "temperature": 20.1}
    finally:
        await asyncio.to_thread(collector.stop)


async def test_replay_keeps_the_recorded_pace_scaled(amqtt_broker: EmbeddedBroker, tmp_path: Path) -> None:
    csv_file = tmp_path / "rec.csv"
    csv_file.write_text("device,metric,ts,value\nd1,t,1000,1\nd1,t,1010,2\n")  # 10 s apart (epoch seconds)
    result = await invoke_async("replay", str(csv_file), "-p", str(amqtt_broker.address.port), "--speed", "20",
                                "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["sent"] == 2 and summary["elapsed_s"] >= 0.45  # 10 s / 20


def test_installed_script_profiles() -> None:
    import subprocess

    result = subprocess.run([str(SCRIPT), "profiles"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "freezer" in result.stdout


async def test_installed_script_run_json(amqtt_broker: EmbeddedBroker) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT), "run", "-p", str(amqtt_broker.address.port), "--devices", "2", "--count", "3",
        "--rate-hz", "20", "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out)
    assert summary["sent"] == 6 and summary["failed"] == 0


async def test_python_dash_m_unreachable_exit_code() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "device_sim", "run", "-p", str(free_port()), "--count", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert b"Connection refused" in err
