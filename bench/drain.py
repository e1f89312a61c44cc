"""Backlog drain with live traffic: how fast an outage's backlog empties, and what it does to the
latency of live readings, against a run without backlog in the same invocation.

    python bench/drain.py [--outage-s 3600] [--rate 1000] [--baseline-s 10]

The backlog is what an outage of ``--outage-s`` seconds at ``--rate`` readings/s leaves on disk
(batches of 1000 readings of sensor-like data, written into the buffer before the gateway starts).
Live traffic: a separate publisher process at ``--rate`` one-reading messages/s, QoS 1, carrying
its send time. The cloud is an amqtt broker in this process; its hook times every live reading
(device send -> cloud broker) and counts the replayed ones. Latency includes the batch age
(``batch.max_age_s`` = 0.2 s here), as it would in production.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._gateway import bench_gateway  # noqa: E402
from bridge.protocol.codec import decode_batch, is_replay  # noqa: E402
from gateway.config import GatewayConfig  # noqa: E402
from tests.e2e.store_helpers import prefill_backlog  # noqa: E402

BATCH = {"max_count": 1000, "max_age_s": 0.2}


class CloudClock:
    def __init__(self) -> None:
        self.live_latency_ms: list[float] = []
        self.replayed = 0
        self.first_replay = 0.0
        self.last_replay = 0.0

    def __call__(self, topic: str, payload: bytes) -> None:
        if not topic.endswith("/telemetry"):
            return
        now_ms = time.time() * 1000
        if is_replay(payload):  # backlog batches hold 1000 readings each: count, don't decode
            self.replayed += 1000
            self.last_replay = time.perf_counter()
            self.first_replay = self.first_replay or self.last_replay
        else:  # this hook runs in the gateway's process: decode only what is timed
            batch = decode_batch(payload)
            self.live_latency_ms.extend(now_ms - r.ts_ms for r in batch.readings if r.device.startswith("bench-"))


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) >= 100 else float("nan")


async def run(backlog_s: int, rate: float, baseline_s: float) -> dict[str, Any]:
    clock = CloudClock()
    prefilled = {"readings": 0, "seconds": 0.0}

    def fill(cfg: GatewayConfig) -> None:
        if backlog_s:
            t0 = time.perf_counter()
            prefilled["readings"], _ = prefill_backlog(cfg, batches=int(backlog_s * rate / 1000), per_batch=1000)
            prefilled["seconds"] = time.perf_counter() - t0

    async with bench_gateway(on_cloud_message=clock, before_start=fill, batch=BATCH,
                             local_broker={"ingest_queue_max": 100000}, buffer={"sync": "full"}) as svc:
        assert svc.embedded is not None
        start = time.perf_counter()
        pub = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "bench" / "_publisher.py"), "127.0.0.1", str(svc.embedded.address.port),
            str(int(rate * 3600)), "1", "100", str(rate), stdout=subprocess.DEVNULL)
        try:
            if backlog_s:
                while clock.replayed < prefilled["readings"]:
                    await asyncio.sleep(0.05)
                    if time.perf_counter() - start > 1800:
                        raise TimeoutError("drain did not finish in 30 minutes")
                elapsed = clock.last_replay - start
            else:
                await asyncio.sleep(baseline_s)
                elapsed = baseline_s
        finally:
            pub.kill()
            await pub.wait()
        eta_seen = svc.snapshot()["uplink"]["drain"]
    lat = clock.live_latency_ms
    return {
        "backlog_readings": prefilled["readings"], "prefill_s": round(prefilled["seconds"], 1),
        "drain_s": round(elapsed, 1) if backlog_s else None,
        "drain_rate_readings_s": round(prefilled["readings"] / elapsed) if backlog_s else None,
        "live_readings_timed": len(lat), "live_p50_ms": round(pct(lat, 50), 1), "live_p99_ms": round(pct(lat, 99), 1),
        "drain_state_at_end": eta_seen,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outage-s", type=int, default=3600)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--baseline-s", type=float, default=10.0)
    args = ap.parse_args()
    base = await run(0, args.rate, args.baseline_s)
    drain = await run(args.outage_s, args.rate, args.baseline_s)
    print(json.dumps({"phase": "live only (baseline)", **base}))
    print(json.dumps({"phase": f"live + {args.outage_s} s outage backlog", **drain}))
    print(f"drain: {drain['backlog_readings']} readings in {drain['drain_s']} s = "
          f"{drain['drain_rate_readings_s']} readings/s (goal >= 50000/s and <= 90 s for 1 h at 1000/s)")
    ratio = drain["live_p99_ms"] / base["live_p99_ms"]
    print(f"live p99 during drain: {drain['live_p99_ms']} ms vs {base['live_p99_ms']} ms without backlog "
          f"(x{ratio:.2f}); p50 {drain['live_p50_ms']} vs {base['live_p50_ms']} ms")


if __name__ == "__main__":
    asyncio.run(main())
