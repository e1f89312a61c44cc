"""The simulator against a real embedded amqtt broker, checked by a real paho subscriber."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from device_sim.builtin_profiles import BUILTIN_PROFILES
from device_sim.runner import Runner
from gateway.source.broker import EmbeddedBroker
from tests.device_sim.helpers import (
    broker_at,
    device_responses,
    device_telemetry,
    devices_watcher,
    run_settings,
    seqs_by_device,
)
from tests.support import RecordingClient, eventually

ROOM = BUILTIN_PROFILES["room"]


@pytest.fixture
async def collector(amqtt_broker: EmbeddedBroker) -> AsyncIterator[RecordingClient]:
    addr = amqtt_broker.address
    col = await devices_watcher(addr.host, addr.port)
    try:
        yield col
    finally:
        await asyncio.to_thread(col.stop)


def _broker(amqtt_broker: EmbeddedBroker) -> Any:
    addr = amqtt_broker.address
    return broker_at(addr.host, addr.port)


@pytest.mark.parametrize("shared", [False, True], ids=["per-device", "shared"])
async def test_run_delivers_every_message_with_contiguous_seq(
        amqtt_broker: EmbeddedBroker, collector: RecordingClient, shared: bool) -> None:
    devices, count = 4, 25
    runner = Runner(run_settings(ROOM, devices=devices, count=count, shared=shared), _broker(amqtt_broker))
    summary = await runner.run()

    assert summary["sent"] == devices * count
    assert summary["failed"] == 0
    assert summary["reconnects"] == 0
    assert {d: s["sent"] for d, s in summary["per_device"].items()} == {
        f"dev-{n:04d}": count for n in range(1, devices + 1)}
    await eventually(lambda: sum(len(v) for v in device_telemetry(collector).values()) >= devices * count)
    telemetry = device_telemetry(collector)
    assert sorted(telemetry) == [f"dev-{n:04d}" for n in range(1, devices + 1)]
    for device, seqs in seqs_by_device(telemetry).items():
        assert seqs == list(range(1, count + 1)), device
    first = telemetry["dev-0001"][0]
    assert set(first) == {"ts", "seq", "temperature", "humidity", "co2"}
    assert isinstance(first["ts"], int) and first["ts"] > 1_600_000_000_000


async def test_msgpack_and_one_metric_per_message(amqtt_broker: EmbeddedBroker, collector: RecordingClient) -> None:
    runner = Runner(run_settings(ROOM, devices=1, count=5, fmt="msgpack", one_metric_per_message=True),
                    _broker(amqtt_broker))
    summary = await runner.run()

    assert summary["sent"] == 15  # 5 samples x 3 metrics
    await eventually(lambda: len(collector.on("devices/dev-0001/telemetry")) >= 15)
    objs = [msgpack.unpackb(p) for p in collector.on("devices/dev-0001/telemetry")]
    assert [o["seq"] for o in objs] == list(range(1, 16))
    assert all(len(o) == 3 and {"ts", "seq"} < set(o) for o in objs)
    assert [next(k for k in o if k not in ("ts", "seq")) for o in objs[:3]] == ["temperature", "humidity", "co2"]


async def test_bare_format_publishes_numbers_per_metric_topic(
        amqtt_broker: EmbeddedBroker, collector: RecordingClient) -> None:
    runner = Runner(run_settings(ROOM, devices=1, count=4, fmt="bare"), _broker(amqtt_broker))
    summary = await runner.run()

    assert summary["sent"] == 12
    await eventually(lambda: len(collector.matching("devices/dev-0001/telemetry/")) >= 12)
    temps = collector.on("devices/dev-0001/telemetry/temperature")
    co2 = collector.on("devices/dev-0001/telemetry/co2")
    assert len(temps) == 4 and len(co2) == 4
    assert all(-10 <= float(t) <= 50 and len(t.split(b".")[-1]) <= 2 for t in temps)
    assert all(int(c) >= 350 for c in co2)  # resolution 1: integers


async def _start(runner: Runner) -> asyncio.Task[dict[str, Any]]:
    task = asyncio.get_running_loop().create_task(runner.run())
    await eventually(lambda: all(p.connected for p in runner.publishers) or task.done(),
                     message="devices connected")
    assert not task.done()
    return task


async def test_commands_get_responses(amqtt_broker: EmbeddedBroker, collector: RecordingClient) -> None:
    runner = Runner(run_settings(ROOM, devices=2, rate_hz=5, duration_s=60, reboot_pause_s=0.2),
                    _broker(amqtt_broker))
    task = await _start(runner)
    cmd = "devices/dev-0001/commands/"
    collector.send(cmd + "ping", json.dumps({"id": "p1"}))
    collector.send(cmd + "set_rate", json.dumps({"id": "r1", "args": {"rate_hz": 20}}))
    collector.send(cmd + "set_rate", json.dumps({"id": "r2", "args": {"rate_hz": -1}}))
    collector.send(cmd + "set_setpoint", json.dumps({"id": "s1", "args": {"metric": "temperature",
                                                                             "value": 25}}))
    collector.send(cmd + "self_destruct", json.dumps({"id": "u1"}))
    collector.send(cmd + "ping", json.dumps({"id": "e1", "expires": 1}))
    collector.send(cmd + "ping", b"{not json")
    collector.send(cmd + "ping", json.dumps({"id": "m1", "args": [1, 2]}))
    expected = {"p1", "r1", "r2", "s1", "u1", "e1", "m1"}
    await eventually(lambda: set(device_responses(collector, "dev-0001")) >= expected, message="all responses")
    responses = device_responses(collector, "dev-0001")

    assert responses["p1"]["status"] == "ok" and isinstance(responses["p1"]["result"]["ts"], int)
    assert responses["r1"] == {"id": "r1", "status": "ok", "result": {"rate_hz": 20.0}}
    assert responses["r2"]["status"] == "error" and "rate_hz" in responses["r2"]["result"]["reason"]
    assert responses["s1"]["status"] == "ok"
    assert responses["u1"]["status"] == "unknown_command"
    assert responses["e1"]["status"] == "expired"
    assert responses["m1"]["status"] == "error" and "args" in responses["m1"]["result"]["reason"]
    assert device_responses(collector, "dev-0002") == {}

    # the sampling rate follows set_rate (20 Hz instead of 5 Hz)
    before = len(collector.on("devices/dev-0001/telemetry"))
    await eventually(lambda: len(collector.on("devices/dev-0001/telemetry")) >= before + 30, timeout=10)

    # reboot: response, "rebooted" event, disconnect, reconnect, telemetry continues with contiguous seq
    collector.send(cmd + "reboot", json.dumps({"id": "b1"}))
    await eventually(lambda: "b1" in device_responses(collector, "dev-0001"))
    await eventually(lambda: any(json.loads(e)["event"] == "rebooted"
                                 for e in collector.on("devices/dev-0001/events")))
    after_reboot = len(collector.on("devices/dev-0001/telemetry"))
    await eventually(lambda: len(collector.on("devices/dev-0001/telemetry")) >= after_reboot + 10)
    runner.request_stop()
    summary = await task

    assert summary["commands_received"] == 9
    assert summary["commands_answered"] == 8  # the payload without an id cannot be answered
    assert summary["commands_unknown"] == 1
    assert summary["commands_expired"] == 1
    assert summary["commands_malformed"] == 3
    assert summary["reboots"] == 1
    assert summary["events_sent"] == 1
    assert summary["reconnects"] == 0  # a commanded reboot is not a lost connection
    dev1 = summary["per_device"]["dev-0001"]
    assert dev1["failed"] == 0 and dev1["sent"] == dev1["last_seq"]
    await eventually(lambda: len(collector.on("devices/dev-0001/telemetry")) >= dev1["sent"])
    seqs = seqs_by_device(device_telemetry(collector))["dev-0001"]
    assert sorted(set(seqs)) == list(range(1, dev1["last_seq"] + 1))


async def test_shared_connection_answers_commands(amqtt_broker: EmbeddedBroker, collector: RecordingClient) -> None:
    runner = Runner(run_settings(ROOM, devices=3, shared=True, rate_hz=2, duration_s=60), _broker(amqtt_broker))
    task = await _start(runner)
    collector.send("devices/dev-0003/commands/ping", json.dumps({"id": 42}))
    collector.send("devices/dev-0003/commands/nope", json.dumps({"id": 43}))
    collector.send("devices/other-1/commands/ping", json.dumps({"id": 44}))  # not ours: ignored
    await eventually(lambda: {42, 43} <= set(device_responses(collector, "dev-0003")))
    runner.request_stop()
    summary = await task

    assert device_responses(collector, "dev-0003")[42]["status"] == "ok"
    assert device_responses(collector, "dev-0003")[43]["status"] == "unknown_command"
    assert collector.on("devices/other-1/responses") == []
    assert summary["commands_received"] == 2


async def test_broker_restart_mid_run_loses_nothing() -> None:
    """Stop the broker mid-run, start a new one on the same port: the devices reconnect, the summary
    counts it, and every seq still reaches the (new) broker."""
    received: list[tuple[str, bytes]] = []
    first = EmbeddedBroker("127.0.0.1", 0, on_message=lambda t, p: received.append((t, p)))
    addr = await first.start()
    devices, count = 3, 60
    runner = Runner(run_settings(ROOM, devices=devices, count=count, rate_hz=20),
                    broker_at(addr.host, addr.port, reconnect_min_s=1, reconnect_max_s=2))
    task = asyncio.get_running_loop().create_task(runner.run())
    second: EmbeddedBroker | None = None
    try:
        await eventually(lambda: len(received) >= devices * 10, message="traffic before the restart")
        await first.stop()
        assert not task.done()
        await eventually(lambda: not any(p.connected for p in runner.publishers), message="devices saw it")
        second = EmbeddedBroker("127.0.0.1", addr.port, on_message=lambda t, p: received.append((t, p)))
        await second.start()
        summary = await asyncio.wait_for(task, 60)
    finally:
        task.cancel()
        await first.stop()
        if second is not None:
            await second.stop()

    assert summary["reconnects"] == devices
    assert summary["sent"] == devices * count
    assert summary["failed"] == 0
    seqs: dict[str, set[int]] = {}
    for topic, payload in received:
        if topic.endswith("/telemetry"):
            seqs.setdefault(topic.split("/")[1], set()).add(json.loads(payload)["seq"])
    assert seqs == {f"dev-{n:04d}": set(range(1, count + 1)) for n in range(1, devices + 1)}


async def test_backlog_overflow_is_counted_and_seq_stays_contiguous() -> None:
    """With the broker gone for good, samples beyond the backlog are failed, not silently dropped."""
    received: list[tuple[str, bytes]] = []
    broker = EmbeddedBroker("127.0.0.1", 0, on_message=lambda t, p: received.append((t, p)))
    addr = await broker.start()
    runner = Runner(run_settings(ROOM, devices=1, count=40, rate_hz=50, backlog=5, qos=0, drain_timeout_s=0.5),
                    broker_at(addr.host, addr.port))
    task = asyncio.get_running_loop().create_task(runner.run())
    try:
        await eventually(lambda: len(received) >= 3)
        await broker.stop()
        summary = await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
        await broker.stop()
    device = summary["per_device"]["dev-0001"]
    assert summary["overflow"] > 0
    assert device["sent"] + device["failed"] == 40
    assert device["last_seq"] == 40 - summary["overflow"]
    delivered = sorted(json.loads(p)["seq"] for t, p in received if t.endswith("/telemetry"))
    assert delivered == list(range(1, len(delivered) + 1))


async def test_device_sockets_have_nagle_off(amqtt_broker: EmbeddedBroker) -> None:
    """A command answer (PUBACK, then the response) must not wait for the broker's delayed ACK."""
    import socket

    from device_sim.publisher import Publisher

    pub = Publisher(_broker(amqtt_broker), "nodelay-dev", subscriptions=["devices/nodelay-dev/commands/+"])
    await pub.connect()
    try:
        sock = pub._client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        await pub.disconnect()
