"""Control latency through the gateway: alerts device -> cloud, commands cloud -> device -> cloud.

    python bench/control_latency.py [--samples 200] [--fill-readings 10000000] [--fill-batch 1000]
                                    [--uplink-protocol 5|3.1.1] [--idle-only]

The gateway runs as its own process (``python -m gateway run``, default ``buffer.sync = "full"``)
with mosquitto (``set_tcp_nodelay true``) as the cloud broker. This process holds one test device on
the gateway's local broker and one cloud client, both ``bridge.mqtt.connection.MqttConnection`` (paho with
TCP_NODELAY):

- alert: the device publishes a temperature that crosses the rule's threshold (90, then 20, ...);
  latency = from the device's publish to the alert record arriving at the cloud client
  (local broker, ingest, rules, control-lane write with fsync, uplink, mosquitto);
- command: the cloud client publishes ``ping`` for the device, which answers at once; latency =
  from the command's publish to the response record arriving at the cloud client (mosquitto,
  downlink, local broker, device, ingest, control-lane write with fsync, uplink, mosquitto).

Samples are taken one at a time (the next after the previous completed, an alert then a command),
under three conditions, each its own row:

- ``idle``: nothing else going on;
- ``load_80pct``: a separate publisher process sends one-reading QoS 1 messages at 80 % of the
  gateway's maximum rate, measured in the same run with ``bench/_publisher.py`` (a burst of
  ``--rate-count`` messages);
- ``backlog_drain``: a backlog of ``--fill-readings`` readings in batches of ``--fill-batch``
  (50 sensors at 1 Hz, humidity with noise, so they compress as real data does: ~1.4 KB per
  1000-reading batch) is written to the buffer before a fresh gateway starts; it then drains at
  full loopback speed (no byte-rate cap, unless ``--drain-max-bytes-per-s``), and samples are taken
  from the moment the first command goes round until the last backlog batch has reached the cloud
  client. The row gives the drain time (first to last backlog batch at the cloud client), the
  drain rate, when sampling started, and the CPU use of the gateway, mosquitto and this process
  over the sampling. The number of samples is what fitted into the drain (with fewer than 100,
  p99 is the maximum).

  Realistic batches drain fast: on loopback about 4,000 batches (4 million readings) a second,
  bound by the gateway's event loop, so 10 million readings (~2.8 h of 1,000 readings/s) last
  only ~2.5 s and give ~100 samples; writing them first takes ~20 s. The cloud client also
  receives the telemetry (as a sink would), to see the last backlog batch arrive.

``--uplink-protocol 3.1.1`` shows what the retain check costs a command on an MQTT 3.1.1 uplink
(one SUBSCRIBE/UNSUBSCRIBE round trip to the cloud broker before the command is handed on; MQTT 5
uplinks need none). ``--idle-only`` stops after the idle row.

Each row is a JSON line with n, p50, p99 and max per kind, and p99 / idle p99 (``p99_vs_idle``).
The issue's goal: p99 <= 20 ms on loopback and <= 2 x the idle p99. Latencies are wall-clock
(``time.perf_counter``) in this process; the machine's other load shows up in them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.mqtt.backoff import DecorrelatedJitter  # noqa: E402
from bridge.mqtt.connect import connect_with_backoff  # noqa: E402
from bridge.mqtt.connection import MqttConnection  # noqa: E402
from bridge.mqtt.types import ClientSettings, Message  # noqa: E402
from bridge.protocol.codec import is_replay  # noqa: E402
from bridge.protocol.model import Reading  # noqa: E402
from bridge.protocol.records import decode_control  # noqa: E402
from bridge.protocol.topics import CloudTopics  # noqa: E402
from gateway.observe.accounting import Accounting  # noqa: E402
from gateway.store.buffer import Budget, DiskBuffer  # noqa: E402
from gateway.store.lanes import LaneWriter  # noqa: E402
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
protocol = "{protocol}"
backoff_base_s = 0.05
backoff_cap_s = 0.5
stats_interval_s = 3600
max_bytes_per_s = {cap}

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


class _Done(Exception):
    """``--idle-only``: the idle row is all that was asked for."""


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
        self.replays = 0  # backlog batches received (replay flag set)
        self.first_replay = self.last_replay = 0.0
        self.n = 0
        self.alerts = 0

    def _resolve(self, key: Any) -> None:
        fut = self.waiting.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())

    def _on_cloud(self, msg: Message) -> None:
        if msg.topic == self.topics.telemetry:
            if is_replay(msg.payload):
                self.replays += 1
                self.last_replay = time.perf_counter()
                self.first_replay = self.first_replay or self.last_replay
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

    async def connect_device(self, port: int) -> None:
        if self.device is not None:
            await self.device.close()
        self.device = await connect_with_backoff(
            [f"mqtt://127.0.0.1:{port}"], ClientSettings(client_id=DEVICE, protocol="3.1.1"),
            DecorrelatedJitter(0.02, 0.2), on_message=self._on_device)
        await self.device.subscribe([(f"devices/{DEVICE}/commands/+", 1)])

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
        device = self.device
        assert device is not None
        self.n += 1
        ts_ms = int(time.time() * 1000) + self.n  # strictly increasing: a unique key per sample
        self.alerts += 1
        value = 90.0 if self.alerts % 2 else 20.0  # raised, cleared, raised, ...
        payload = json.dumps({"ts": ts_ms, "temperature": value}).encode()
        return await self._timed(("alert", ts_ms),
                                 lambda: device.publish(f"devices/{DEVICE}/telemetry", payload, 1))

    async def command(self) -> float | None:
        cloud = self.cloud
        assert cloud is not None
        self.n += 1
        cid = f"c-{self.n}"
        topic = f"{self.topics.prefix}/commands/{DEVICE}/ping"
        return await self._timed(("command", cid),
                                 lambda: cloud.publish(topic, json.dumps({"id": cid}).encode(), 1))

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
    def __init__(self, tmp: Path, cloud_url: str, cap: float = 0.0, protocol: str = "5") -> None:
        self.port = free_port()
        self.data = tmp / "data"
        self.cfg = tmp / "gateway.toml"
        self.cfg.write_text(CONFIG.format(gw=GW, data=self.data, port=self.port, cloud=cloud_url, cap=cap,
                                          protocol=protocol))
        self.proc: subprocess.Popen[bytes] | None = None

    def prefill(self, readings: int, per_batch: int, devices: int = 50) -> tuple[int, int]:
        """Write telemetry batches straight into the gateway's buffer (it is not running yet), as
        an outage would leave them: ``devices`` sensors at 1 Hz, humidity with noise (so the batches
        compress like real data, not like a constant). Returns (batches, payload bytes)."""
        buf = DiskBuffer(self.data / "buffer", {"telemetry": Budget(1 << 40), "control": Budget(16 << 20)},
                         sync="normal")
        buf.open()
        lanes = LaneWriter(buf, CloudTopics(GW), Accounting(), compression="zlib", level=6, on_written=lambda: None)
        rng = random.Random(7)
        noise = [round(45.0 + rng.gauss(0, 2), 1) for _ in range(4093)]  # prime: no pattern per batch
        names = [f"fill-{d:02d}" for d in range(devices)]
        t0 = int(time.time() * 1000) - readings // devices * 1000
        batches = 0
        for start in range(0, readings, per_batch):
            lanes.write_batch([Reading(names[i % devices], "humidity", t0 + i // devices * 1000, noise[i % 4093],
                                       i // devices + 1) for i in range(start, min(start + per_batch, readings))])
            batches += 1
        size = sum(len(r.payload) for r in buf.take("telemetry", batches))
        buf.close()
        return batches, size

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


def cpu_seconds(gateway_pid: int, mosquitto_pid: int | None) -> dict[str, float]:
    """User + system CPU seconds so far of the gateway, mosquitto and this process (Linux /proc)."""
    out = {"probe": sum(os.times()[:2])}
    tick = os.sysconf("SC_CLK_TCK")
    for name, pid in (("gateway", gateway_pid), ("mosquitto", mosquitto_pid)):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


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
    ap.add_argument("--fill-readings", type=int, default=10_000_000, help="backlog readings for the drain")
    ap.add_argument("--fill-batch", type=int, default=1000, help="readings per pre-written batch")
    ap.add_argument("--drain-max-bytes-per-s", type=float, default=0.0,
                    help="uplink byte-rate cap during the drain (0 = none: full loopback speed)")
    ap.add_argument("--rate-count", type=int, default=20000, help="messages for the max-rate measurement")
    ap.add_argument("--uplink-protocol", choices=["5", "3.1.1"], default="5", help="the gateway's uplink protocol")
    ap.add_argument("--idle-only", action="store_true", help="only the idle row")
    args = ap.parse_args()
    mosq = Mosquitto(extra_conf="set_tcp_nodelay true")
    mosq.start()
    rows: list[dict[str, Any]] = []
    probe = Probe(mosq.url)
    try:
        await probe.connect_cloud()
        with tempfile.TemporaryDirectory() as tmp:
            gw = GatewayProcess(Path(tmp), mosq.url, protocol=args.uplink_protocol)
            gw.start()
            try:
                await probe.connect_device(gw.port)
                await probe.ready()
                rows.append(summary("idle", await probe.sample(args.samples), uplink_protocol=args.uplink_protocol))
                if args.idle_only:
                    raise _Done

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
            gw = GatewayProcess(Path(tmp), mosq.url, args.drain_max_bytes_per_s, args.uplink_protocol)
            batches, size = gw.prefill(args.fill_readings, args.fill_batch)
            probe.replays = 0
            probe.first_replay = probe.last_replay = 0.0
            t0 = time.perf_counter()
            gw.start()
            try:
                await probe.connect_device(gw.port)

                def drained() -> bool:
                    return probe.replays >= batches

                await probe.ready()
                sampling_from = time.perf_counter()
                assert gw.proc is not None
                cpu0 = cpu_seconds(gw.proc.pid, mosq.proc.pid if mosq.proc else None)
                got = await probe.sample(100_000, until=drained)
                cpu1 = cpu_seconds(gw.proc.pid, mosq.proc.pid if mosq.proc else None)
                sampled_s = time.perf_counter() - sampling_from
                deadline = time.perf_counter() + 60
                while not drained():  # samples end with the last backlog batch: wait for it
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"only {probe.replays} of {batches} backlog batches arrived")
                    await asyncio.sleep(0.01)
                drain_s = probe.last_replay - probe.first_replay
                rows.append(summary("backlog_drain", got, backlog_readings=args.fill_readings,
                                    backlog_batches=batches, backlog_bytes=size, drain_s=round(drain_s, 2),
                                    drain_readings_s=round(args.fill_readings / drain_s),
                                    first_batch_after_start_s=round(probe.first_replay - t0, 2),
                                    sampled_from_s=round(sampling_from - probe.first_replay, 2),
                                    cpu_pct={name: round(100 * (cpu1[name] - cpu0[name]) / sampled_s)
                                             for name in cpu0 if name in cpu1}))
            finally:
                gw.stop()
    except _Done:
        pass
    finally:
        await probe.close()
        mosq.cleanup()
    print_rows(rows)


def print_rows(rows: list[dict[str, Any]]) -> None:
    """One JSON line per row, each kind with its p99 / the first (idle) row's p99."""
    idle = rows[0]
    for row in rows:
        for kind in ("alert", "command"):
            if row[kind] and idle[kind]:
                row[kind]["p99_vs_idle"] = round(row[kind]["p99_ms"] / idle[kind]["p99_ms"], 2)
        print(json.dumps(row))


if __name__ == "__main__":
    asyncio.run(main())
