"""``edge-gateway push-config`` against real brokers: mosquitto (cloud) and an in-process gateway.

The CLI runs its own event loop, so it is invoked in a worker thread while the gateway runs on the
test's loop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner, Result

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import ClientSettings, Message
from gateway.cli import main
from tests.e2e.harness import gateway_config, running_gateway
from tests.support import Mosquitto, eventually

RULES_50 = """
version = {version}

[[rules]]
name = "pushed"
metrics = "temp"
alert = {{ max = 50.0, hysteresis = 1.0 }}

[batch]
max_count = 50
"""


def write(tmp: Path, text: str, name: str = "push.toml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


async def cli(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, main, ["push-config", *args])


def args(url: str, path: Path, *more: str) -> list[str]:
    return ["--url", url, "--gateway", "gw-test", str(path), "--timeout", "20", *more]


async def test_applied_exits_0_and_the_document_is_retained(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with running_gateway(gateway_config(tmp_path, mosquitto.url)) as svc:
        await eventually(lambda: svc.link.connected)
        res = await cli(*args(mosquitto.url, write(tmp_path, RULES_50.format(version=2))))
        assert res.exit_code == 0, res.output
        assert "applied: version 2 (gateway gw-test is at version 2)" in res.output
        assert svc.snapshot()["config_version"] == 2 and svc.batcher.max_count == 50
        res = await cli(*args(mosquitto.url, write(tmp_path, RULES_50.format(version=1)), "--version", "3",
                              "--json"))
        assert res.exit_code == 0, res.output
        status = json.loads(res.stdout)
        assert (status["kind"], status["status"], status["version"], status["errors"]) == \
            ("config_status", "applied", 3, [])
    retained: list[Message] = []
    conn = await MqttConnection.open(mosquitto.url, ClientSettings(client_id="check", protocol="5"),
                                     on_message=retained.append)
    try:
        await conn.subscribe([("edge/gw-test/config", 1)])
        await eventually(lambda: len(retained) == 1)
    finally:
        await conn.close()
    assert retained[0].retain and json.loads(retained[0].payload)["version"] == 3


async def test_stale_and_rejected_exit_1(tmp_path: Path, mosquitto: Mosquitto) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    cfg = gateway_config(tmp_path, mosquitto.url, downlink={"config_file": str(blocker / "pushed.json")})
    async with running_gateway(cfg) as svc:
        await eventually(lambda: svc.link.connected)
        res = await cli(*args(mosquitto.url, write(tmp_path, RULES_50.format(version=1)), "--no-retain"))
        assert res.exit_code == 1, res.output  # the gateway cannot persist it: rejected, nothing applied
        assert "rejected: version 1" in res.output and "(storage)" in res.output
        assert svc.snapshot()["config_version"] == 0
    cfg = gateway_config(tmp_path, mosquitto.url)
    async with running_gateway(cfg) as svc:
        await eventually(lambda: svc.link.connected)
        path = write(tmp_path, RULES_50.format(version=5))
        assert (await cli(*args(mosquitto.url, path, "--no-retain"))).exit_code == 0
        res = await cli(*args(mosquitto.url, path, "--no-retain"))
        assert res.exit_code == 1 and "stale: version 5 (gateway gw-test is at version 5)" in res.output


async def test_no_answer_exits_1(tmp_path: Path, mosquitto: Mosquitto) -> None:
    res = await cli("--url", mosquitto.url, "--gateway", "gw-nobody", str(write(tmp_path, "version = 1")),
                    "--timeout", "0.3", "--no-retain")
    assert res.exit_code == 1 and "no answer" in res.output


async def test_unreachable_broker_exits_1(tmp_path: Path, mosquitto: Mosquitto) -> None:
    mosquitto.stop()
    res = await cli(*args(mosquitto.url, write(tmp_path, "version = 1")))
    assert res.exit_code == 1 and "error" in res.output


def test_bad_arguments_and_invalid_files_exit_2_naming_the_key(tmp_path: Path) -> None:
    url = "mqtt://127.0.0.1:1"  # never contacted: everything is checked first
    runner = CliRunner()

    def run(*a: str) -> Result:
        return runner.invoke(main, ["push-config", *a])

    good = write(tmp_path, "version = 1")
    cases = [
        (["--url", url, "--gateway", "a/b", str(good)], "--gateway"),
        (["--url", url, "--gateway", "+", str(good)], "--gateway"),
        (["--url", url, "--gateway", "x" * 65, str(good)], "--gateway"),
        (["--url", "http://x", "--gateway", "gw", str(good)], "--url"),
        (["--url", url, "--gateway", "gw", str(good), "--version", "0"], "--version"),
        (["--url", url, "--gateway", "gw", str(good), "--prefix", "edge/#"], "--prefix"),
        (["--url", url, "--gateway", "gw", str(tmp_path / "missing.toml")], "(file)"),
        (["--url", url, "--gateway", "gw", str(write(tmp_path, "version = ", "syntax.toml"))], "(syntax)"),
        (["--url", url, "--gateway", "gw", str(write(tmp_path, "[batch]\nmax_count = 5", "nov.toml"))], "version"),
        (["--url", url, "--gateway", "gw",
          str(write(tmp_path, 'version = 2\n[[rules]]\nalert = { min = 5.0, max = 1.0 }', "r.toml"))],
         "rules[0].alert: min (5.0) is above max (1.0)"),
        (["--url", url, "--gateway", "gw", str(write(tmp_path, "version = 2\n[buffer]\nsync = 'full'", "b.toml"))],
         "buffer: Extra inputs are not permitted"),
        (["--url", url, "--gateway", "gw", str(write(tmp_path, "version = 2\n[[rules]]\nvalid = { max = nan }",
                                                     "nan.toml"))], "(value)"),
    ]
    for argv, named in cases:
        res = run(*argv)
        assert res.exit_code == 2, (argv, res.output)
        assert named in res.output, (argv, res.output)
