"""Control latency through the gateway: alerts device -> cloud, commands cloud -> device -> cloud.

    python bench/control_latency.py [--samples 200] [--fill-readings 60000] [--fill-batch 5]

The gateway runs as its own process (``python -m gateway run``) with mosquitto as the cloud broker.
This process holds one test device (on the gateway's local broker) and one cloud client:

- alert: the device publishes a temperature that crosses the rule's threshold (90, then 20, ...);
  latency = from the device's publish to the alert record arriving at the cloud client;
- command: the cloud client publishes ``ping`` for the device, which answers at once; latency =
  from the command's publish to the response record arriving at the cloud client.

Samples are taken one at a time (the next after the previous completed), under three conditions:
idle; under telemetry load at 80 % of the gateway's maximum rate, measured in the same run with
``bench/_publisher.py`` (QoS 1, separate process); and while a backlog of pre-written telemetry
batches (``--fill-readings`` readings, ``--fill-batch`` per batch, written to the buffer before the
gateway starts) drains to the cloud. Prints one JSON line per condition and the ratios of p99 to
the idle p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.backoff import DecorrelatedJitter  # noqa: E402
from bridge.codec import decode_control  # noqa: E402
from bridge.connect import connect_with_backoff  # noqa: E402
from bridge.model import Reading  # noqa: E402
from bridge.mqtt_types import ClientSettings, Message  # noqa: E402
from bridge.topics import CloudTopics  # noqa: E402
from bridge.uplink import MqttConnection  # noqa: E402
from gateway.accounting import Accounting  # noqa: E402
from gateway.buffer import Budget, DiskBuffer  # noqa: E402
from gateway.lanes import LaneWriter  # noqa: E402
from tests.support import Mosquitto, free_port  # noqa: E402

GW = "bench"
DEVICE = "lat-dev"
SAMPLE_TIMEOUT_S = 10.0

CONFIG = """
[gateway]
id = "{gw}"
data_dir = "{data}"

[local_broker]
listen = "127.0.0.1:{port}"
ingest_queue_max = 200000

[uplink]
urls = ["{cloud}"]
protocol = "5"
backoff_base_s = 0.05
backoff_cap_s = 0.5
stats_interval_s = 3600

[batch]
max_count = 1000
max_age_s = 0.5

[downlink]
allowed_commands = ["ping"]

[log]
level = "warning"

[[rules]]
name = "hot"
metrics = "temperature"
alert = {{ max = 80.0, hysteresis = 1.0 }}
"""


def nodelay(conn: MqttConnection) -> None:
    """Disable Nagle on a measuring client's socket. paho leaves it on, so a small publish that
    follows another small write (e.g. the PUBACK for the previous answer) can wait for the peer's
    delayed ACK (~40 ms on Linux): that would be the probe's latency, not the gateway's."""
    sock = conn._client.socket()  # bench only: the paho client behind the adapter
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Probe:
    """The cloud client and the test device, and the samples they take."""

    def __init__(self, cloud_url: str) -> None:
        self.cloud_url = cloud_url
        self.topics = CloudTopics(GW)
        self.cloud: MqttConnection | None = None
        self.device: MqttConnection | None = None
        self.waiting: dict[Any, asyncio.Future[float]] = {}
        self.telemetry_msgs = 0
        self.n = 0
        self.alerts = 0

    def _resolve(self, key: Any) -> None:
        fut = self.waiting.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())

    def _on_cloud(self, msg: Message) -> None:
        if msg.topic == self.topics.telemetry:
            self.telemetry_msgs += 1
        elif msg.topic == self.topics.alerts:
            self._resolve(("alert", decode_control(msg.payload)["ts_ms"]))
        elif msg.topic == self.topics.responses:
            self._resolve(("command", decode_control(msg.payload)["id"]))

    def _on_device(self, msg: Message) -> None:
        assert self.device is not None
        body = json.loads(msg.payload)
        self.device.publish(f"devices/{DEVICE}/responses", json.dumps({"id": body["id"], "status": "ok"}).encode(), 1)

    async def connect_cloud(self) -> None:
        self.cloud = await MqttConnection.open(self.cloud_url, ClientSettings(client_id="bench-cloud", protocol="5"),
                                               on_message=self._on_cloud)
        t = self.topics
        await self.cloud.subscribe([(t.telemetry, 0), (t.alerts, 1), (t.responses, 1)])
        nodelay(self.cloud)

    async def connect_device(self, port: int) -> None:
        if self.device is not None:
            await self.device.close()
        self.device = await connect_with_backoff(
            [f"mqtt://127.0.0.1:{port}"], ClientSettings(client_id=DEVICE, protocol="3.1.1"),
            DecorrelatedJitter(0.02, 0.2), on_message=self._on_device)
        await self.device.subscribe([(f"devices/{DEVICE}/commands/+", 1)])
        nodelay(self.device)

    async def _timed(self, key: Any, send: Callable[[], object]) -> float | None:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[key] = fut
        start = time.perf_counter()
        send()
        try:
            return (await asyncio.wait_for(fut, SAMPLE_TIMEOUT_S) - start) * 1000.0
        except asyncio.TimeoutError:
            self.waiting.pop(key, None)
            return None

    async def alert(self) -> float | None:
        assert self.device is not None
        self.n += 1
        ts_ms = int(time.time() * 1000) + self.n  # strictly increasing: a unique key per sample
        self.alerts += 1
        value = 90.0 if self.alerts % 2 else 20.0  # raised, cleared, raised, ...
        payload = json.dumps({"ts": ts_ms, "temperature": value}).encode()
        return await self._timed(("alert", ts_ms),
                                 lambda: self.device.publish(f"devices/{DEVICE}/telemetry", payload, 1))  # type: ignore[union-attr]

    async def command(self) -> float | None:
        assert self.cloud is not None
        self.n += 1
        cid = f"c-{self.n}"
        topic = f"{self.topics.prefix}/commands/{DEVICE}/ping"
        return await self._timed(("command", cid),
                                 lambda: self.cloud.publish(topic, json.dumps({"id": cid}).encode(), 1))  # type: ignore[union-attr]

    async def ready(self) -> None:
        """Wait until a command goes all the way round (gateway subscribed, device subscribed)."""
        for _ in range(100):
            if await self.command() is not None:
                return
        raise RuntimeError("the gateway never answered a command")

    async def sample(self, count: int, until: Callable[[], bool] = lambda: False) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"alert": [], "command": [], "timeouts": []}
        for _ in range(count):
            if until():
                break
            for kind in ("alert", "command"):
                ms = await (self.alert() if kind == "alert" else self.command())
                if ms is None:
                    out["timeouts"].append(1.0)
                else:
                    out[kind].append(ms)
        return out

    async def close(self) -> None:
        for conn in (self.device, self.cloud):
            if conn is not None:
                await conn.close()


class GatewayProcess:
    def __init__(self, tmp: Path, cloud_url: str) -> None:
        self.port = free_port()
        self.data = tmp / "data"
        self.cfg = tmp / "gateway.toml"
        self.cfg.write_text(CONFIG.format(gw=GW, data=self.data, port=self.port, cloud=cloud_url))
        self.proc: subprocess.Popen[bytes] | None = None

    def prefill(self, readings: int, per_batch: int) -> int:
        """Write telemetry batches straight into the gateway's buffer (it is not running yet)."""
        buf = DiskBuffer(self.data / "buffer", {"telemetry": Budget(1 << 30), "control": Budget(16 << 20)},
                         sync="normal")
        buf.open()
        lanes = LaneWriter(buf, CloudTopics(GW), Accounting(), compression="zlib", level=6, on_written=lambda: None)
        t0 = int(time.time() * 1000) - readings
        batches = 0
        for start in range(0, readings, per_batch):
            lanes.write_batch([Reading(f"fill-{i % 50:02d}", "humidity", t0 + i, 40.0 + i % 7, i)
                               for i in range(start, min(start + per_batch, readings))])
            batches += 1
        buf.close()
        return batches

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(self.cfg)], cwd=ROOT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


async def publisher(port: int, count: int, rate: float = 0.0) -> asyncio.subprocess.Process:
    args = [str(ROOT / "bench" / "_publisher.py"), "127.0.0.1", str(port), str(count), "1", "50"]
    if rate > 0:
        args.append(str(rate))
    return await asyncio.create_subprocess_exec(sys.executable, *args, stdout=subprocess.PIPE)


def summary(condition: str, got: dict[str, list[float]], **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"condition": condition}
    for kind in ("alert", "command"):
        values = got[kind]
        row[kind] = {"n": len(values), "p50_ms": round(percentile(values, 0.5), 2),
                     "p99_ms": round(percentile(values, 0.99), 2), "max_ms": round(max(values), 2)} if values else {}
    row["timeouts"] = len(got["timeouts"])
    row.update(extra)
    return row


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200, help="alert + command pairs per condition")
    ap.add_argument("--fill-readings", type=int, default=60000)
    ap.add_argument("--fill-batch", type=int, default=5, help="readings per pre-written batch")
    ap.add_argument("--rate-count", type=int, default=20000, help="messages for the max-rate measurement")
    args = ap.parse_args()
    mosq = Mosquitto(extra_conf="set_tcp_nodelay true")
    mosq.start()
    rows: list[dict[str, Any]] = []
    probe = Probe(mosq.url)
    try:
        await probe.connect_cloud()
        with tempfile.TemporaryDirectory() as tmp:
            gw = GatewayProcess(Path(tmp), mosq.url)
            gw.start()
            try:
                await probe.connect_device(gw.port)
                await probe.ready()
                rows.append(summary("idle", await probe.sample(args.samples)))

                full = await publisher(gw.port, args.rate_count)
                out, _ = await full.communicate()
                res = json.loads(out)
                max_rate = res["published"] / res["seconds"]
                await probe.ready()  # the gateway has caught up with that burst
                load = 0.8 * max_rate
                paced = await publisher(gw.port, int(load * 120), load)
                try:
                    got = await probe.sample(args.samples, until=lambda: paced.returncode is not None)
                finally:
                    if paced.returncode is None:
                        paced.terminate()
                    await paced.wait()
                rows.append(summary("load_80pct", got, max_rate_msg_s=round(max_rate), load_msg_s=round(load)))
            finally:
                gw.stop()
        with tempfile.TemporaryDirectory() as tmp:
            gw = GatewayProcess(Path(tmp), mosq.url)
            batches = gw.prefill(args.fill_readings, args.fill_batch)
            before = probe.telemetry_msgs
            t0 = time.perf_counter()
            gw.start()
            try:
                await probe.connect_device(gw.port)
                drained = lambda: probe.telemetry_msgs - before >= batches  # noqa: E731
                await probe.ready()
                got = await probe.sample(100_000, until=drained)
                rows.append(summary("backlog_drain", got, backlog_readings=args.fill_readings,
                                    backlog_batches=batches, drain_s=round(time.perf_counter() - t0, 2)))
            finally:
                gw.stop()
    finally:
        await probe.close()
        mosq.cleanup()
    idle = rows[0]
    for row in rows:
        for kind in ("alert", "command"):
            if row[kind] and idle[kind]:
                row[kind]["p99_vs_idle"] = round(row[kind]["p99_ms"] / idle[kind]["p99_ms"], 2)
        print(json.dumps(row))


if __name__ == "__main__":
    asyncio.run(main())
