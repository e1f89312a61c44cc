"""Exactly one answer per command, in every path, against real brokers:

- a command published *retained* never runs, whether it is handed out on subscribe or reaches a
  connected gateway live (where MQTT 3.1.1 brokers clear the retain flag): MQTT 5 uplinks ask for
  Retain-As-Published, MQTT 3.1.1 uplinks check each live command for a retained copy first;
- it is answered once (``rejected``/``retained``) and not again after a restart;
- an empty retained message (an operator clearing a retained command or config) gets no answer;
- a wildcard subscriber on the local broker does not make devices look connected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest

from gateway.source.broker import EmbeddedBroker
from tests.e2e.downlink_support import CloudOperator, LocalSpy, sim_devices
from tests.e2e.harness import gateway_config, local_url, running_gateway
from tests.support import Mosquitto, eventually, running_mosquitto


class Cloud:
    """A cloud broker and the MQTT version the gateway's uplink speaks to it."""

    def __init__(self, url: str, protocol: Literal["5", "3.1.1"]) -> None:
        self.url = url
        self.protocol: Literal["5", "3.1.1"] = protocol


# the real mosquitto binary over both versions, and amqtt (which speaks MQTT 3.1.1 only)
@pytest.fixture(params=["mosquitto-5", "mosquitto-3.1.1", "amqtt-3.1.1"])
async def cloud(request: pytest.FixtureRequest) -> AsyncIterator[Cloud]:
    broker, protocol = str(request.param).split("-", 1)
    assert protocol in ("5", "3.1.1")
    if broker == "mosquitto":
        with running_mosquitto() as mosquitto:
            yield Cloud(mosquitto.url, "5" if protocol == "5" else "3.1.1")
    else:
        amqtt = EmbeddedBroker("127.0.0.1", 0)
        address = await amqtt.start()
        try:
            yield Cloud(f"mqtt://{address.host}:{address.port}", "3.1.1")
        finally:
            await amqtt.stop()


def no_probes(op: CloudOperator) -> list[dict[str, Any]]:
    return [r for r in op.responses if not str(r.get("id", "")).startswith("probe-")]


async def test_a_retained_command_never_runs_and_is_answered_once(tmp_path: Path, cloud: Cloud) -> None:
    operator = await CloudOperator.connect(cloud.url, protocol="3.1.1")
    cfg = gateway_config(tmp_path, cloud.url, cloud.protocol)
    try:
        async with running_gateway(cfg) as gw:
            await operator.until_subscribed()
            async with sim_devices(gw) as runner:
                await operator.send("dev-0001/ping", {"id": "live-1"})
                assert (await operator.answer("live-1"))["status"] == "ok"  # a live command runs
                # published retained while the gateway is connected: the broker delivers it live
                await operator.send("dev-0001/ping", {"id": "ret-1"}, retain=True)
                answer = await operator.answer("ret-1")
                assert (answer["status"], answer["source"], answer["result"]["reason"]) == (
                    "rejected", "gateway", "retained")
                await operator.send("dev-0001/ping", {"id": "live-2"})  # later commands still run
                assert (await operator.answer("live-2"))["status"] == "ok"
                pings = sum(d.stats.commands_received for d in runner.devices.values())
            assert pings == 2  # the device ran live-1 and live-2, never ret-1
            c = gw.snapshot()["commands"]
            assert (c["forwarded"], c["rejected"].get("retained")) == (2, 1)

        # a restart: the broker hands the retained command out again, flagged; no second answer
        async with running_gateway(cfg) as gw:
            await operator.until_subscribed()
            await eventually(lambda: gw.snapshot()["commands"]["duplicates"] >= 1,
                             message=lambda: str(gw.snapshot()["commands"]))
            # the operator clears it the usual way: an empty retained message, answered by nobody
            await operator.send("dev-0001/ping", b"", retain=True)
            await eventually(lambda: gw.snapshot()["commands"]["cleared"] == 1)
            await operator.send("probe", {"id": "probe-last"})  # answered at once, after the empty one
            await operator.answer("probe-last")
            assert set(gw.snapshot()["commands"]["rejected"]) == {"bad_topic"}  # the probes only
        assert [(r["id"], r["status"]) for r in no_probes(operator)] == [
            ("live-1", "ok"), ("ret-1", "rejected"), ("live-2", "ok")]
    finally:
        await operator.send("dev-0001/ping", b"", retain=True)
        await operator.close()


async def test_an_empty_retained_config_is_ignored(tmp_path: Path, mosquitto: Mosquitto) -> None:
    operator = await CloudOperator.connect(mosquitto.url)
    try:
        async with running_gateway(gateway_config(tmp_path, mosquitto.url)) as gw:
            await operator.until_subscribed()
            await operator.conn.publish("edge/gw-test/config", b"", 1, True)
            await eventually(lambda: gw.snapshot()["config_push"]["cleared"] == 1)
            assert gw.snapshot()["config_push"]["rejected"] == 0
        assert [r for r in operator.responses if r.get("kind") == "config_status"] == []
    finally:
        await operator.close()


async def test_a_wildcard_subscriber_does_not_make_a_device_present(tmp_path: Path, mosquitto: Mosquitto) -> None:
    operator = await CloudOperator.connect(mosquitto.url)
    cfg = gateway_config(tmp_path, mosquitto.url, downlink={"hold_offline_s": 0.5})
    try:
        async with running_gateway(cfg) as gw:
            spy = await LocalSpy.connect(local_url(gw), present=("dev-1",))  # devices/# and dev-1's own
            await operator.until_subscribed()
            await operator.send("ghost/ping", {"id": "g-1"})  # nobody is ghost: held, then undeliverable
            await operator.send("dev-1/ping", {"id": "d-1"})  # dev-1 listens on its own topic: delivered
            ghost = await operator.answer("g-1")
            assert (ghost["status"], ghost["source"]) == ("undeliverable", "gateway")
            await eventually(lambda: spy.topics() == ["devices/dev-1/commands/ping"], message=lambda: str(spy.messages))
            await spy.close()
            c = gw.snapshot()["commands"]
            assert (c["forwarded"], c["answered"].get("undeliverable")) == (1, 1)
        assert operator.answers("d-1") == []  # forwarded to a device that never answers: no gateway answer
        assert len(operator.answers("g-1")) == 1
    finally:
        await operator.close()

