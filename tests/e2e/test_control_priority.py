"""Control lane priority (issue 5): alerts and command answers go ahead of a telemetry backlog.

A gateway restarts with a large telemetry backlog on disk (what an outage leaves) and drains it to
mosquitto under a byte-rate cap (the metered-link setting), so the drain lasts several seconds
whatever the machine's speed. While it drains, a device raises an alert and the cloud sends a
``ping`` to a device-sim device. Both control records must reach the cloud ahead of the rest of the
backlog: the proof is the order in which one cloud subscriber receives the gateway's messages, not
a clock. The latencies and the drain time are printed (``pytest -s``) for information only.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.mqtt.types import Message
from bridge.protocol.codec import decode_batch
from bridge.protocol.records import decode_control
from gateway.service import GatewayService
from tests.e2e.downlink_support import CloudOperator, sim_devices
from tests.e2e.harness import CloudCollector, Devices, gateway_config, local_url, running_gateway
from tests.e2e.store_helpers import prefill_backlog
from tests.support import Mosquitto, eventually

BATCHES, PER_BATCH = 150, 1000  # 150k readings in realistic 1000-reading batches
MIN_BACKLOG_AT_TRIGGER = 50_000  # readings still on disk, not yet sent, when the alert and command go
DRAIN_S = 7.0  # target drain time under the cap (after the first burst)
BURST_BYTES = 65536  # the token bucket starts full: this much goes out at once


@dataclass
class Arrival:
    """One message from the gateway, in the order the cloud subscriber received it."""

    at: float  # time.monotonic()
    kind: str  # "replay", "live", "alert", "response", other control kinds
    readings: int = 0
    record: dict[str, Any] | None = None
    buffered: int = 0  # telemetry readings in the gateway's buffer at that moment
    backlog_left: int = 0  # backlog readings that had not reached the cloud yet


class OrderedCollector(CloudCollector):
    """A cloud subscriber on ``edge/gw-test/#`` that logs every arrival in order, with the state
    of the gateway's buffer at that moment (same process, same event loop)."""

    def __init__(self, url: str, restored: int) -> None:
        super().__init__(url)
        self.gw: GatewayService | None = None
        self.log: list[Arrival] = []
        self.backlog_left = restored

    def _on(self, msg: Message) -> None:
        rel = msg.topic.removeprefix(self.prefix + "/")
        now = time.monotonic()
        buffered = self.gw.buffer.readings("telemetry") if self.gw is not None else 0
        if rel == "telemetry":
            batch = decode_batch(msg.payload)
            self.data.batches.append(batch)
            if batch.replay:
                self.backlog_left -= len(batch.readings)
            self.log.append(Arrival(now, "replay" if batch.replay else "live", len(batch.readings),
                                    buffered=buffered, backlog_left=self.backlog_left))
        elif rel in {"alerts", "responses"}:
            record = decode_control(msg.payload)
            self.data.control.append(record)
            self.log.append(Arrival(now, record["kind"], record=record, buffered=buffered,
                                    backlog_left=self.backlog_left))

    def first(self, kind: str, **match: Any) -> int | None:
        for i, a in enumerate(self.log):
            if a.kind == kind and a.record is not None and all(a.record.get(k) == v for k, v in match.items()):
                return i
        return None

    def replays(self) -> list[int]:
        return [i for i, a in enumerate(self.log) if a.kind == "replay"]


async def test_alert_and_command_overtake_a_draining_backlog(tmp_path: Path, mosquitto: Mosquitto,
                                                             operator: CloudOperator) -> None:
    rules: Any = [{"name": "overheat", "metrics": "temperature", "alert": {"max": 80.0}}]
    cfg = gateway_config(tmp_path, mosquitto.url, rules=rules, batch={"max_count": 1000, "max_age_s": 0.2})
    restored, size = prefill_backlog(cfg, batches=BATCHES, per_batch=PER_BATCH)
    assert restored == BATCHES * PER_BATCH
    # On loopback the backlog would drain in about a second; the cap stretches it to ~DRAIN_S so
    # that there is a "during". The cap never holds back control records (they only spend budget).
    rate = (size - BURST_BYTES) / DRAIN_S
    cfg = gateway_config(tmp_path, mosquitto.url, rules=rules, batch={"max_count": 1000, "max_age_s": 0.2},
                         uplink={"max_bytes_per_s": rate})
    cloud = OrderedCollector(mosquitto.url, restored)
    await cloud.connect()
    try:
        started = time.monotonic()
        async with running_gateway(cfg) as gw:
            cloud.gw = gw
            boiler = await Devices.connect(local_url(gw), client_id="boiler-1")
            async with sim_devices(gw):  # dev-0001 answers commands
                await operator.until_subscribed()
                await eventually(lambda: bool(cloud.replays()), message="the drain never started")
                at_trigger = cloud.backlog_left
                buffered_at_trigger = gw.buffer.readings("telemetry")
                assert at_trigger >= MIN_BACKLOG_AT_TRIGGER, (
                    f"set-up took so long that only {at_trigger} backlog readings were left")
                assert gw.snapshot()["uplink"]["drain"]["backlog_readings"] > 0

                # the alert and the command, at the same moment
                t_trigger = time.monotonic()
                hot = json.dumps({"temperature": 95.0}).encode()
                await asyncio.gather(
                    boiler.conn.publish("devices/boiler-1/telemetry", hot, 1),
                    operator.send("dev-0001/ping", {"id": "prio-1"}),
                )
                await eventually(lambda: cloud.first("alert", device="boiler-1") is not None
                                 and cloud.first("response", id="prio-1") is not None,
                                 timeout=15, message=lambda: f"control records: {cloud.data.control}")
            await boiler.close()
            # now let the backlog finish, to know when its last batch arrived
            await eventually(lambda: cloud.backlog_left <= 0 and gw.buffer.readings("telemetry") == 0, timeout=60,
                             message=lambda: f"backlog left {cloud.backlog_left}, buffer {gw.snapshot()['buffer']}")
            assert gw.accounting.balance() == 0
    finally:
        await cloud.close()

    i_alert = cloud.first("alert", device="boiler-1")
    i_resp = cloud.first("response", id="prio-1")
    assert i_alert is not None and i_resp is not None
    alert, resp = cloud.log[i_alert], cloud.log[i_resp]
    assert alert.record is not None and resp.record is not None
    assert (alert.record["metric"], alert.record["value"], alert.record["state"]) == ("temperature", 95.0, "raised")
    assert (resp.record["status"], resp.record["source"], resp.record["device"]) == ("ok", "device", "dev-0001")

    replays = cloud.replays()
    assert sum(cloud.log[i].readings for i in replays) == restored  # the whole backlog, each batch once
    last_replay = replays[-1]
    # Ordering: both control records arrived before the last backlog batch, while the buffer still
    # held telemetry, and backlog batches kept arriving after them: they overtook the backlog.
    for name, i, a in (("alert", i_alert, alert), ("response", i_resp, resp)):
        assert i < last_replay, f"the {name} waited for the whole backlog"
        assert a.buffered > 0 and a.backlog_left > 0, f"the {name} arrived after the backlog had left the buffer"
    after = [i for i in replays if i > max(i_alert, i_resp)]
    assert after, "no backlog batch arrived after the control records: the drain was over"

    drain_s = cloud.log[last_replay].at - cloud.log[replays[0]].at
    print(f"\nbacklog: {restored} readings in {BATCHES} batches, {size} bytes, cap {rate / 1024:.1f} KiB/s;"
          f" drain {drain_s:.2f} s (first to last replay batch; {cloud.log[last_replay].at - started:.2f} s"
          f" from start)")
    print(f"at trigger: {at_trigger} backlog readings not yet at the cloud, {buffered_at_trigger} in the buffer")
    for name, a in (("alert", alert), ("command", resp)):
        print(f"{name}: {1000 * (a.at - t_trigger):.1f} ms after the trigger; buffer then held {a.buffered}"
              f" readings, {a.backlog_left} backlog readings still to come")
    print(f"backlog batches after both control records: {len(after)} of {len(replays)}"
          f" ({sum(cloud.log[i].readings for i in after)} readings)")
    if resp.record.get("rtt_ms") is not None:
        print(f"command round trip gateway -> device -> gateway: {resp.record['rtt_ms']:.1f} ms")
