"""``edge-gateway command`` against real brokers: mosquitto (cloud), an in-process gateway with its
embedded amqtt broker, and device-sim devices. The CLI runs its own event loop, so it is invoked
in a worker thread while the gateway runs on the test's loop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gateway.cli import main
from tests.e2e.downlink_support import CloudOperator, sim_devices
from tests.e2e.harness import gateway_config, running_gateway
from tests.support import Mosquitto


async def cli(url: str, *args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, main, ["command", "--url", url, "--gateway", "gw-test", *args])


async def test_command_cli_exit_codes_against_a_running_gateway(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = gateway_config(tmp_path, mosquitto.url, downlink={"hold_offline_s": 0.2})
    async with running_gateway(cfg) as gw:
        op = await CloudOperator.connect(mosquitto.url)
        await op.until_subscribed()
        await op.close()
        async with sim_devices(gw):
            ok = await cli(mosquitto.url, "dev-0001", "set_rate", "--args", '{"rate_hz": 3}', "--ttl", "30",
                           "--id", "cli-1", "--timeout", "20")
            assert ok.exit_code == 0, ok.output
            assert "ok from device: dev-0001 set_rate id=cli-1 (round trip" in ok.output
            assert 'result: {"rate_hz": 3.0}' in ok.output
            as_json = await cli(mosquitto.url, "dev-0001", "ping", "--json", "--timeout", "20")
            assert as_json.exit_code == 0, as_json.output
            answer = json.loads(as_json.stdout)
            assert (answer["status"], answer["source"], answer["command"]) == ("ok", "device", "ping")
            assert answer["id"].startswith("cli-") and answer["rtt_ms"] > 0
            bad_args = await cli(mosquitto.url, "dev-0001", "set_rate", "--args", '{"rate_hz": -1}', "--timeout", "20")
            assert bad_args.exit_code == 1 and "error from device" in bad_args.output
        offline = await cli(mosquitto.url, "dev-0009", "ping", "--timeout", "20")
        assert offline.exit_code == 1 and "undeliverable from gateway" in offline.output
        refused = await cli(mosquitto.url, "dev-0001", "self_destruct", "--timeout", "20")
        assert refused.exit_code == 1 and "rejected from gateway" in refused.output
        assert "not_allowed" in refused.output


async def test_no_answer_exits_1(mosquitto: Mosquitto) -> None:
    res = await cli(mosquitto.url, "dev-1", "ping", "--timeout", "0.5")  # no gateway behind this broker
    assert res.exit_code == 1 and "no answer" in res.output


@pytest.mark.parametrize(("args", "hint"), [
    (["dev+1", "ping"], "DEVICE"),
    (["#", "ping"], "DEVICE"),
    (["a/b", "ping"], "DEVICE"),
    (["", "ping"], "DEVICE"),
    (["d" * 65, "ping"], "DEVICE"),
    (["..", "ping"], "DEVICE"),
    (["dev-1", ".."], "NAME"),
    (["dev-1", "pi/ng"], "NAME"),
    (["dev-1", "+"], "NAME"),
    (["dev-1", "ping", "--args", "[1]"], "--args"),
    (["dev-1", "ping", "--args", "{oops"], "--args"),
    (["dev-1", "ping", "--id", "i" * 65], "--id"),
    (["dev-1", "ping", "--ttl", "-1"], "--ttl"),
])
def test_bad_arguments_exit_2_before_connecting(args: list[str], hint: str) -> None:
    res = CliRunner().invoke(main, ["command", "--url", "mqtt://127.0.0.1:1", "--gateway", "gw-test", *args])
    assert res.exit_code == 2, res.output
    assert hint in res.output


def test_bad_url_and_gateway_exit_2() -> None:
    res = CliRunner().invoke(main, ["command", "--url", "http://x", "--gateway", "gw", "d", "ping"])
    assert res.exit_code == 2 and "--url" in res.output
    res = CliRunner().invoke(main, ["command", "--url", "mqtt://127.0.0.1:1", "--gateway", "g/w", "d", "ping"])
    assert res.exit_code == 2 and "--gateway" in res.output


async def test_the_operator_cli_speaks_mqtt_3_1_1_to_a_3_1_1_only_cloud(tmp_path: Path) -> None:
    from gateway.source.broker import EmbeddedBroker

    cloud = EmbeddedBroker("127.0.0.1", 0)  # amqtt: MQTT 3.1.1 only
    await cloud.start()
    url = f"mqtt://127.0.0.1:{cloud.address.port}"
    try:
        cfg = gateway_config(tmp_path, url, protocol="3.1.1", downlink={"hold_offline_s": 0})
        async with running_gateway(cfg):
            for _ in range(10):  # the first tries may come before the gateway has subscribed
                res = await cli(url, "dev-0009", "ping", "--protocol", "3.1.1", "--timeout", "2")
                if "no answer" not in res.output:
                    break
            assert res.exit_code == 1 and "undeliverable from gateway" in res.output, res.output  # answered
    finally:
        await cloud.stop()
