"""Commands end to end: mosquitto (cloud) -> gateway -> embedded amqtt (local) -> device-sim -> back.

Every command gets exactly one answer on edge/gw-test/responses; nothing reaches a local topic
other than the command topic of a valid, allowed, unexpired command.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.e2e.downlink_support import CloudOperator, LocalSpy, sim_devices
from tests.e2e.harness import gateway_config, local_url, running_gateway
from tests.support import Mosquitto, eventually


def gw_config(tmp_path: Path, mosquitto: Mosquitto, **downlink: Any) -> Any:
    return gateway_config(tmp_path, mosquitto.url, downlink=downlink)


def no_probes(op: CloudOperator) -> list[dict[str, Any]]:
    return [r for r in op.responses if not str(r["id"]).startswith("probe-")]


async def test_round_trip_through_device_sim(tmp_path: Path, mosquitto: Mosquitto, operator: CloudOperator) -> None:
    async with running_gateway(gw_config(tmp_path, mosquitto)) as gw:
        await operator.until_subscribed()
        async with sim_devices(gw):
            await operator.send("dev-0001/ping", {"id": "c-1"})
            await operator.send("dev-0001/set_rate", {"id": 2, "args": {"rate_hz": 4}, "ttl_s": 30})
            ping = await operator.answer("c-1")
            rate = await operator.answer(2)
        assert ping["kind"] == "response" and ping["gw"] == "gw-test" and isinstance(ping["seq"], int)
        assert (ping["device"], ping["command"], ping["status"], ping["source"]) == ("dev-0001", "ping", "ok", "device")
        assert isinstance(ping["result"]["ts"], int)
        assert isinstance(ping["rtt_ms"], float) and ping["rtt_ms"] > 0
        assert (rate["command"], rate["status"], rate["result"]) == ("set_rate", "ok", {"rate_hz": 4.0})
        c = gw.snapshot()["commands"]
        probes = operator.probes_answered()  # one, or more on a slow machine
        assert (c["forwarded"], c["responses_matched"], c["answered"]) == (2, 2, {"rejected": probes})
    assert len(operator.answers("c-1")) == 1 and len(operator.answers(2)) == 1


async def test_unknown_and_not_allowed_commands(tmp_path: Path, mosquitto: Mosquitto, operator: CloudOperator) -> None:
    cfg = gw_config(tmp_path, mosquitto, allowed_commands=["ping", "dance"])
    async with running_gateway(cfg) as gw:
        await operator.until_subscribed()
        async with sim_devices(gw):
            await operator.send("dev-0001/dance", {"id": "u-1"})  # allowed here, unknown to the device
            await operator.send("dev-0001/reboot", {"id": "n-1"})  # a device command, not allowed here
            unknown = await operator.answer("u-1")
            refused = await operator.answer("n-1")
        assert (unknown["status"], unknown["source"], unknown["command"]) == ("unknown_command", "device", "dance")
        assert (refused["status"], refused["source"], refused["rtt_ms"]) == ("rejected", "gateway", None)
        assert refused["result"]["reason"] == "not_allowed" and refused["device"] == "dev-0001"
        probes = operator.probes_answered()
        assert gw.snapshot()["commands"]["rejected"] == {"bad_topic": probes, "not_allowed": 1}


async def test_expired_commands_are_answered_and_not_delivered(tmp_path: Path, mosquitto: Mosquitto,
                                                               operator: CloudOperator) -> None:
    async with running_gateway(gw_config(tmp_path, mosquitto)) as gw:
        spy = await LocalSpy.connect(local_url(gw), present=("dev-1",))
        await operator.until_subscribed()
        await operator.send("dev-1/ping", {"id": "e-1", "expires": time.time() - 1})
        await operator.send("dev-1/ping", {"id": "e-2", "ttl_s": 0})
        await operator.send("dev-1/ping", {"id": "ok-1", "ttl_s": 60})
        for cid in ("e-1", "e-2"):
            answer = await operator.answer(cid)
            assert (answer["status"], answer["source"], answer["command"]) == ("expired", "gateway", "ping")
        await eventually(lambda: spy.topics() == ["devices/dev-1/commands/ping"], message=lambda: str(spy.messages))
        await spy.close()
    delivered = [p for t, p in spy.messages if t.endswith("/commands/ping")]
    assert b'"id":"ok-1"' in delivered[0] and b'"expires":' in delivered[0]


async def test_offline_device_is_answered_undeliverable_after_the_hold(tmp_path: Path, mosquitto: Mosquitto,
                                                                     operator: CloudOperator) -> None:
    async with running_gateway(gw_config(tmp_path, mosquitto, hold_offline_s=0.3)) as gw:
        await operator.until_subscribed()
        await operator.send("dev-0001/ping", {"id": "h-1"})
        answer = await operator.answer("h-1")
        assert (answer["status"], answer["source"]) == ("undeliverable", "gateway")
        assert "0.3" in answer["result"]["reason"]
        assert gw.snapshot()["commands"]["held"] == 0
    cfg = gw_config(tmp_path / "2", mosquitto, hold_offline_s=0)
    async with running_gateway(cfg):
        await operator.until_subscribed()
        await operator.send("dev-0001/ping", {"id": "h-2"})
        answer = await operator.answer("h-2")
        assert answer["status"] == "undeliverable" and answer["result"]["reason"] == "device is not connected"


async def test_held_command_is_delivered_when_the_device_connects(tmp_path: Path, mosquitto: Mosquitto,
                                                                  operator: CloudOperator) -> None:
    async with running_gateway(gw_config(tmp_path, mosquitto, hold_offline_s=30)) as gw:
        await operator.until_subscribed()
        await operator.send("dev-0001/ping", {"id": "later"})
        await eventually(lambda: gw.commands.held == 1)
        async with sim_devices(gw):
            answer = await operator.answer("later")
        assert (answer["status"], answer["source"], answer["command"]) == ("ok", "device", "ping")
        assert answer["rtt_ms"] is not None
        assert gw.commands.held == 0 and len(operator.answers("later")) == 1


async def test_hold_queue_overflow_and_shutdown_answer_every_held_command(
        tmp_path: Path, mosquitto: Mosquitto, operator: CloudOperator) -> None:
    async with running_gateway(gw_config(tmp_path, mosquitto, hold_offline_s=60, max_held=2)) as gw:
        await operator.until_subscribed()
        for n in range(3):
            await operator.send(f"dev-{n}/ping", {"id": f"q-{n}"})
        full = await operator.answer("q-2")
        assert (full["status"], full["result"]["reason"]) == ("undeliverable", "hold queue full")
        assert gw.commands.held == 2
    for cid in ("q-0", "q-1"):  # answered while the gateway stopped, delivered before it said offline
        answer = await operator.answer(cid)
        assert (answer["status"], answer["result"]["reason"]) == ("undeliverable", "the gateway is stopping")


async def test_injection_attempts_are_rejected_and_nothing_reaches_a_wrong_topic(
        tmp_path: Path, mosquitto: Mosquitto, operator: CloudOperator) -> None:
    async with running_gateway(gw_config(tmp_path, mosquitto, max_command_bytes=1024)) as gw:
        spy = await LocalSpy.connect(local_url(gw), present=("dev-1",))
        await operator.until_subscribed()
        attempts: list[tuple[str, Any, str, str, str]] = [
            # topic suffix, payload, reason, device and command echoed back
            ("a/b/ping", {"id": "i-1"}, "bad_topic", "a", "b/ping"),
            ("dev-1/ping/x", {"id": "i-2"}, "bad_topic", "dev-1", "ping/x"),
            ("/ping", {"id": "i-3"}, "bad_device", "", "ping"),
            ("dev-1/", {"id": "i-4"}, "bad_name", "dev-1", ""),
            ("x" * 10_000 + "/ping", {"id": "i-5"}, "bad_device", "x" * 64, "ping"),
            ("dev-1/" + "n" * 10_000, {"id": "i-6"}, "bad_name", "dev-1", "n" * 64),
            ("dev-1/ping", {"id": "i-7", "args": {"blob": "z" * 2000}}, "too_large", "dev-1", "ping"),
            ("dev-1/ping", {"id": "i-8", "args": [1]}, "bad_args", "dev-1", "ping"),
            ("dev-1/ping", {"id": "i-9", "topic": "devices/x/commands/y"}, "bad_args", "dev-1", "ping"),
        ]
        for suffix, body, *_ in attempts:
            await operator.send(suffix, body)
        await operator.send("dev-1/ping", b"{not json")
        await operator.send("dev-1/ping", {"args": {}})
        await eventually(lambda: len(no_probes(operator)) == len(attempts) + 2,
                         message=lambda: str(no_probes(operator)))
        for n, (_suffix, _body, reason, device, command) in enumerate(attempts, 1):
            cid = f"i-{n}"
            answer = operator.answers(cid)
            assert len(answer) == 1, cid
            got = answer[0]
            assert (got["status"], got["source"], got["result"]["reason"]) == ("rejected", "gateway", reason), cid
            assert (got["device"], got["command"]) == (device, command), cid
        nulls = operator.answers(None)
        assert sorted(r["result"]["reason"] for r in nulls) == ["bad_id", "bad_json"]
        # a valid command afterwards: the only thing the spy ever sees on a command topic
        await operator.send("dev-1/ping", {"id": "fine"})
        await eventually(lambda: spy.topics() != [], message="the valid command reached the local broker")
        assert spy.topics() == ["devices/dev-1/commands/ping"]
        assert {t for t, _ in spy.messages} == {"devices/dev-1/commands/ping"}
        await spy.close()
        c = gw.snapshot()["commands"]
        assert c["forwarded"] == 1 and c["answered"]["rejected"] == len(attempts) + 2 + operator.probes_answered()


async def test_a_retained_command_is_rejected_not_replayed(tmp_path: Path, mosquitto: Mosquitto,
                                                           operator: CloudOperator) -> None:
    await operator.send("dev-1/ping", {"id": "r-1"}, retain=True)  # retained before the gateway subscribes
    try:
        async with running_gateway(gw_config(tmp_path, mosquitto)) as gw:
            spy = await LocalSpy.connect(local_url(gw))
            answer = await operator.answer("r-1")
            assert (answer["status"], answer["result"]["reason"]) == ("rejected", "retained")
            await operator.until_subscribed()
            await spy.close()
            assert spy.topics() == []
    finally:
        await operator.conn.publish(f"{operator.prefix}/commands/dev-1/ping", b"", 1, True)  # clear it


async def test_commands_off_means_no_command_subscription(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with running_gateway(gw_config(tmp_path, mosquitto, commands=False)) as gw:
        assert all("/commands/" not in topic for topic, _ in gw.downlink.subscriptions())
