"""Uplink bytes per reading vs. the raw JSON-per-message bytes the devices sent, same run.

    python bench/bytes_per_reading.py [--devices 50] [--seconds 30]

The real device simulator (standard "room" profile: temperature, humidity and CO2 at sensor
resolution, one JSON message per device per second) publishes to the gateway's embedded broker; a
subscriber on the local broker adds up the raw payload bytes; the gateway batches, compresses and
forwards to a stand-in cloud broker. Runs (in real time, about --seconds each):

  1. rules off (every reading forwarded), default batch policy (5 s / 1000 readings), zlib
  2. the same with zstd
  3. rules off, batches of 30 s (a metered-link setting), zlib
  4. the lab's deadband rules, default batch policy, zlib (what a typical deployment sends)

Uplink bytes are telemetry envelope payload bytes (control records counted apart).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._gateway import bench_gateway  # noqa: E402
from bridge.mqtt.connection import MqttConnection  # noqa: E402
from bridge.mqtt.types import ClientSettings, Message  # noqa: E402
from gateway.lab import LAB_RULES  # noqa: E402


async def run(args: argparse.Namespace, rules: list[dict[str, Any]], compression: str,
              max_age_s: float, max_count: int) -> dict[str, Any]:
    raw = {"messages": 0, "payload_bytes": 0, "topic_bytes": 0}

    def count(msg: Message) -> None:
        raw["messages"] += 1
        raw["payload_bytes"] += len(msg.payload)
        raw["topic_bytes"] += len(msg.topic)

    batch = {"max_count": max_count, "max_age_s": max_age_s, "compression": compression}
    async with bench_gateway(batch=batch, rules=rules) as svc:  # leaving it flushes and drains to the cloud
        assert svc.embedded is not None
        port = svc.embedded.address.port
        tap = await MqttConnection.open(f"mqtt://127.0.0.1:{port}", ClientSettings("bench-tap", protocol="3.1.1"),
                                        on_message=count)
        await tap.subscribe([("devices/+/telemetry", 0)])
        sim = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "device_sim", "run", "--port", str(port), "--devices", str(args.devices),
            "--rate-hz", "1", "--count", str(args.seconds), "--profile", "room", "--seed", "7",
            "--json", stdout=asyncio.subprocess.PIPE)
        out, _ = await sim.communicate()
        summary = json.loads(out)
        acc = svc.accounting
        while acc.messages_in < summary["sent"] or raw["messages"] < summary["sent"]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await tap.close()
    a = svc.snapshot()["accounting"]
    readings = a["readings_in"]
    return {
        "rules": "lab deadband rules" if rules else "none (every reading forwarded)",
        "compression": compression,
        "batch_max_age_s": max_age_s,
        "messages": raw["messages"],
        "readings_in": readings,
        "readings_delivered": a["delivered"],
        "batches": a["batches_delivered"],
        "raw_json_bytes_per_reading": round(raw["payload_bytes"] / readings, 2),
        "raw_json_plus_topic_bytes_per_reading": round((raw["payload_bytes"] + raw["topic_bytes"]) / readings, 2),
        "uplink_bytes_per_delivered_reading": round(a["bytes_up_telemetry"] / max(a["delivered"], 1), 2),
        "uplink_bytes_per_reading_in": round(a["bytes_up_telemetry"] / readings, 3),
        "control_bytes_up": a["bytes_up_control"],
        "reduction_vs_raw_json": round(raw["payload_bytes"] / max(a["bytes_up_telemetry"], 1), 1),
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=30, help="messages per device, one per second")
    args = ap.parse_args()
    runs: list[tuple[list[dict[str, Any]], str, float, int]] = [
        ([], "zlib", 5.0, 1000), ([], "zstd", 5.0, 1000), ([], "zlib", 30.0, 100000), (LAB_RULES, "zlib", 5.0, 1000),
    ]
    for rules, compression, age, count in runs:
        print(json.dumps(await run(args, rules, compression, age, count)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
