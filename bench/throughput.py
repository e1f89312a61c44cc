"""End-to-end readings/s through the gateway vs. the bare embedded amqtt broker, same run.

    python bench/throughput.py [--count 30000] [--devices 50]
    python bench/throughput.py --auth [--count 30000]

``--auth`` compares the gateway with device authentication and the identity-bound ACL (password
auth, one device publishing its own telemetry) against the same gateway with ``auth.mode = "none"``,
same run, same single publisher.

Baseline: an embedded amqtt broker whose ingest hook only counts messages. Gateway: the full
service (same broker and hook, plus decode, rules, batching, disk buffer and uplink to a second
amqtt broker in this process standing in for the cloud). The publisher is a separate process.
Rate = messages / (time from the first to the last message handled), one reading per message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._gateway import bench_gateway  # noqa: E402
from gateway.config import GatewayConfig  # noqa: E402
from gateway.source.broker import EmbeddedBroker  # noqa: E402
from gateway.source.passwords import hash_password, write_password_file  # noqa: E402


async def publish(port: int, count: int, qos: int, devices: int, login: tuple[str, str] | None = None) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "_publisher.py"), "127.0.0.1", str(port), str(count), str(qos),
        str(devices), *(("0", *login) if login else ()), stdout=subprocess.PIPE)
    await proc.communicate()


async def wait_for(pred: Callable[[], bool], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish")
        await asyncio.sleep(0.005)


async def bare(count: int, qos: int, devices: int) -> float:
    seen = {"n": 0, "first": 0.0, "last": 0.0}

    def hook(_t: str, _p: bytes) -> None:
        now = time.perf_counter()
        if seen["n"] == 0:
            seen["first"] = now
        seen["n"] += 1
        seen["last"] = now

    broker = EmbeddedBroker("127.0.0.1", 0, on_message=hook)
    await broker.start()
    pub = asyncio.create_task(publish(broker.address.port, count, qos, devices))
    await wait_for(lambda: seen["n"] >= count)
    await pub
    await broker.stop()
    return count / (seen["last"] - seen["first"])


BENCH_DEVICE = ("bench-000", "bench-password")


def _write_password(cfg: GatewayConfig) -> None:
    write_password_file(cfg.password_file, {BENCH_DEVICE[0]: hash_password(BENCH_DEVICE[1])})


async def gateway(count: int, qos: int, devices: int, sync: str = "full",
                  auth: bool = False) -> tuple[float, dict[str, object]]:
    rules = [{"metrics": "temperature", "valid": {"min": -40, "max": 85}, "alert": {"max": 80}}]
    local: dict[str, object] = {"ingest_queue_max": count + 1}
    if auth:
        local["auth"] = {"mode": "password"}
    async with bench_gateway(local_broker=local, buffer={"sync": sync}, rules=rules,
                             batch={"max_count": 1000, "max_age_s": 0.5},
                             before_start=_write_password if auth else None) as svc:
        assert svc.embedded is not None
        acc = svc.accounting
        marks = {"first": 0.0}

        async def first_seen() -> None:
            await wait_for(lambda: acc.readings_in > 0)
            marks["first"] = time.perf_counter()

        watcher = asyncio.create_task(first_seen())
        pub = asyncio.create_task(publish(svc.embedded.address.port, count, qos, devices,
                                          BENCH_DEVICE if auth else None))
        await wait_for(lambda: acc.readings_in >= count)
        processed = time.perf_counter()
        await watcher
        await pub
        await wait_for(lambda: acc.delivered + sum(acc.dropped.values()) >= count)
        delivered = time.perf_counter()
    snap = svc.snapshot()["accounting"]
    return count / (processed - marks["first"]), {
        "delivered_rate": round(count / (delivered - marks["first"])),
        "balance": svc.accounting.balance(), "dropped": snap["dropped"],
        "bytes_up_telemetry": snap["bytes_up_telemetry"],
        "denied": svc.snapshot()["security"]["denied"],
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=30000)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--auth", action="store_true", help="auth + ACL on vs off (one device publishing)")
    args = ap.parse_args()
    results = []
    if args.auth:
        for qos in (0, 1):
            off, _ = await gateway(args.count, qos, 1)
            on, extra = await gateway(args.count, qos, 1, auth=True)
            off2, _ = await gateway(args.count, qos, 1)  # again, so drift shows
            base = (off + off2) / 2
            print(json.dumps({"qos": qos, "auth_off_readings_s": round(base), "auth_on_readings_s": round(on),
                              "ratio_on_off": round(on / base, 3), "off_runs": [round(off), round(off2)],
                              "denied": extra["denied"], "balance": extra["balance"]}))
        return
    for qos in (0, 1):
        base = await bare(args.count, qos, args.devices)
        gw, extra = await gateway(args.count, qos, args.devices)
        results.append({"qos": qos, "bare_amqtt_msg_s": round(base), "gateway_readings_s": round(gw),
                        "ratio": round(gw / base, 2), **extra})
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    asyncio.run(main())
