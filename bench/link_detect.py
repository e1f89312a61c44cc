"""Time to detect a blackholed uplink, against the keepalive, same run.

    python bench/link_detect.py [--keepalive 5 10 30]

For each keepalive: a gateway sends live telemetry through a TCP proxy (tests/chaos.py) to an
amqtt broker standing in for the cloud; the proxy then silently drops everything both ways (no
FIN, no RST: a half-open link). Printed: seconds until the watchdog tears the link down, that time
in keepalives (goal < 2), and seconds until the gateway is connected again once the path heals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import Secrets, parse_config  # noqa: E402
from gateway.service import GatewayService  # noqa: E402
from gateway.source.broker import EmbeddedBroker  # noqa: E402
from tests.chaos import ChaosProxy  # noqa: E402


async def until(pred: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.01)


async def measure(keepalive: int) -> dict[str, float]:
    cloud = EmbeddedBroker("127.0.0.1", 0)
    await cloud.start()
    proxy = ChaosProxy("127.0.0.1", cloud.address.port)
    await proxy.start()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config({
            "gateway": {"id": "bench", "data_dir": tmp},
            "local_broker": {"listen": "127.0.0.1:0"},
            "uplink": {"urls": [f"mqtt://127.0.0.1:{proxy.port}"], "protocol": "3.1.1", "keepalive_s": keepalive,
                       "backoff_base_s": 0.1, "backoff_cap_s": 0.5},
        }, "<bench>")
        svc = GatewayService(cfg, Secrets())
        stop = asyncio.Event()
        task = asyncio.create_task(svc.run(stop))
        await svc.started.wait()
        await until(lambda: svc.link.connected, 10)
        proxy.blackhole_after(0)
        cut = time.monotonic()
        await until(lambda: svc.link.watchdog_trips >= 1, 4 * keepalive)
        detected = time.monotonic() - cut
        proxy.passthrough()
        healed = time.monotonic()
        await until(lambda: svc.link.connected and svc.link.connects >= 2, 30)
        back = time.monotonic() - healed
        stop.set()
        await task
    await proxy.stop()
    await cloud.stop()
    return {"keepalive_s": keepalive, "detected_s": round(detected, 2), "keepalives": round(detected / keepalive, 2),
            "reconnected_after_heal_s": round(back, 2)}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keepalive", type=int, nargs="+", default=[5, 10, 30])
    args = ap.parse_args()
    for k in args.keepalive:
        print(json.dumps(await measure(k)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
