"""The gateway against what users would run instead, a Mosquitto bridge, in one run.

    python bench/vs_bridge.py [--devices 50] [--messages 20000] [--shapes 1,10]
                              [--setups bridge,external,embedded] [--drain-s 60] [--warmup 0.1]

One cloud broker (a mosquitto process) serves every setup; each setup gets a fresh local side:

- ``bridge``: a local mosquitto bridged to the cloud mosquitto as mosquitto.conf(5) describes it
  (``topic devices/# out 1``, ``cleansession false``, persistence, ``bridge_attempt_unsubscribe
  false``...; every setting is explained in ``bench/_bridge.py``);
- ``external``: the gateway (``edge-gateway run``, its own process, default settings) with a local
  mosquitto as its local broker (``local_broker.mode = "external"``; same mosquitto settings as the
  bridge's local broker, without the bridge);
- ``embedded``: the gateway with its embedded amqtt broker (the default).

The same publisher (``bench/_shaped_publisher.py``, one separate process, one paho client) sends
``--messages`` JSON messages at QoS 1 with a window of 100 unacknowledged messages, round-robin over
``--devices`` device ids, in each shape of ``--shapes`` (readings per message). Per setup and shape:

- readings/s: counted at the cloud by one subscriber (``#`` at QoS 1, its network thread only records
  each message and its arrival time; the bridge's JSON and the gateway's batches, decoded with
  ``bridge.protocol.codec``, are counted afterwards). The rate is taken between the arrival of the
  first ``--warmup`` fraction of the readings and that of all but the last ``--warmup`` fraction, so
  start-up and the tail (the gateway's last partial batch) are left out the same way for everyone;
- uplink bytes per reading: payload + topic bytes of every message the cloud received from the setup
  (for the gateway also its status messages), per distinct reading delivered; MQTT framing is left out;
- lost: readings sent minus distinct readings delivered once everything arrived or ``--drain-s``
  seconds after the publisher finished; duplicates are counted apart.

``--stock-queue`` leaves mosquitto's default queue of 1000 messages per client on the local brokers
(bridge and external), to show what a client that falls behind loses with it.

The publisher's own rate is printed too: a setup cannot be faster than it. Durability differs in the
gateway's favour: it fsyncs each batch to disk before it is acknowledged upstream, while the bridge's
mosquitto saves its queue every 60 s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._bridge import (  # noqa: E402
    Arrival,
    CloudTap,
    MosquittoProcess,
    bridge_conf,
    cloud_conf,
    free_port,
    local_conf,
)
from bridge.protocol.codec import decode_batch  # noqa: E402

SETUPS = ("bridge", "external", "embedded")
LABELS = {"bridge": "Mosquitto bridge", "external": "gateway, external mosquitto",
          "embedded": "gateway, embedded amqtt"}


@dataclass
class Count:
    """What the cloud received from one setup: distinct readings with their arrival times, bytes."""

    sent: int
    keys: set[tuple[str, int, str]] = field(default_factory=set)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (arrival, distinct readings so far)
    readings: int = 0
    uplink_bytes: int = 0
    done: int = 0  # arrivals looked at

    def add(self, at: float, keys: list[tuple[str, int, str]]) -> None:
        self.readings += len(keys)
        self.keys.update(keys)
        self.timeline.append((at, len(self.keys)))

    def rate(self, warmup: float) -> float:
        lo, hi = warmup * self.sent, (1 - warmup) * self.sent
        start = next(((t, n) for t, n in self.timeline if n >= lo), self.timeline[0])
        end = next(((t, n) for t, n in self.timeline if n >= hi), self.timeline[-1])
        return (end[1] - start[1]) / (end[0] - start[0]) if end[0] > start[0] else float("nan")


def json_keys(topic: str, payload: bytes) -> list[tuple[str, int, str]]:
    body = json.loads(payload)
    device = topic.split("/")[1]
    return [(device, body["seq"], k) for k in body if k not in ("ts", "seq")]


def batch_keys(_topic: str, payload: bytes) -> list[tuple[str, int, str]]:
    return [(r.device, r.seq or 0, r.metric) for r in decode_batch(payload).readings]


@dataclass(frozen=True)
class Source:
    """Which cloud messages belong to a run: ``prefix`` selects them (bytes), ``readings_topic``
    those that carry readings, decoded by ``keys``."""

    prefix: str
    readings_topic: Callable[[str], bool]
    keys: Callable[[str, bytes], list[tuple[str, int, str]]]

    def consume(self, count: Count, arrivals: list[Arrival]) -> None:
        end = len(arrivals)
        for a in arrivals[count.done:end]:
            if not a.topic.startswith(self.prefix):
                continue
            count.uplink_bytes += len(a.payload) + len(a.topic.encode())
            if self.readings_topic(a.topic):
                count.add(a.at, self.keys(a.topic, a.payload))
        count.done = end


def bridge_source(run: str) -> Source:
    return Source(f"devices/{run}-", lambda t: t.endswith("/telemetry"), json_keys)


def gateway_source(gw_id: str) -> Source:
    return Source(f"edge/{gw_id}/", lambda t: t == f"edge/{gw_id}/telemetry", batch_keys)


# ---------------------------------------------------------------- the gateway process

def gateway_toml(folder: Path, gw_id: str, cloud_port: int, metrics_port: int, local: str) -> Path:
    path = folder / "gateway.toml"
    path.write_text(f"""
[gateway]
id = "{gw_id}"
data_dir = "{folder / 'data'}"
[local_broker]
{local}
[uplink]
urls = ["mqtt://127.0.0.1:{cloud_port}"]
[metrics]
listen = "127.0.0.1:{metrics_port}"
[log]
level = "warning"
""")
    return path


def gateway_ready(proc: subprocess.Popen[bytes], metrics_port: int, log: Path, timeout: float = 60) -> None:
    """Wait for /readyz: ready, and the uplink connected."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}: {log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2) as resp:
                body = json.loads(resp.read())
                if body.get("ready") and body.get("uplink") == "connected":
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gateway not ready within {timeout}s: {log.read_text(errors='replace')}")


# ---------------------------------------------------------------- one run

@dataclass
class Env:
    args: argparse.Namespace
    cloud_port: int
    tap: CloudTap
    tmp: Path


def publish(env: Env, port: int, shape: int, run: str) -> float:
    """Run the publisher to the end; its messages per second."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "_shaped_publisher.py"), "127.0.0.1", str(port),
         str(env.args.messages), str(env.args.devices), str(shape), run],
        check=True, capture_output=True).stdout
    return float(env.args.messages / json.loads(out)["seconds"])


def drain(env: Env, source: Source, count: Count) -> None:
    deadline = time.monotonic() + env.args.drain_s
    while True:
        source.consume(count, env.tap.arrivals)
        if len(count.keys) >= count.sent or time.monotonic() > deadline:
            return
        time.sleep(0.25)


def wait_bridge(env: Env, client_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while env.tap.bridge_states.get(client_id) != b"1":
        if time.monotonic() > deadline:
            raise RuntimeError("the bridge did not connect to the cloud broker")
        time.sleep(0.02)


def run_bridge(env: Env, shape: int, run: str) -> tuple[Count, float]:
    folder = env.tmp / run
    port = free_port()
    conf = bridge_conf(port, folder, env.cloud_port, f"bridge-{run}", env.args.stock_queue)
    local = MosquittoProcess(conf, port, folder)
    try:
        local.wait_listening()
        wait_bridge(env, f"bridge-{run}")
        count = Count(env.args.messages * shape)
        pub_rate = publish(env, port, shape, run)
        drain(env, bridge_source(run), count)
    finally:
        local.stop()
    return count, pub_rate


def run_gateway(env: Env, shape: int, run: str, external: bool) -> tuple[Count, float]:
    folder = env.tmp / run
    folder.mkdir()
    port, metrics_port, gw_id = free_port(), free_port(), f"bench-{run}"
    broker_dir = folder / "mosquitto"  # persistence: MosquittoProcess opens it to the user mosquitto
    local = MosquittoProcess(local_conf(port, broker_dir, env.args.stock_queue), port, broker_dir) if external else None
    section = f'mode = "external"\nurl = "mqtt://127.0.0.1:{port}"' if external else f'listen = "127.0.0.1:{port}"'
    log = folder / "gateway.log"
    try:
        if local is not None:
            local.wait_listening()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "-c",
                 str(gateway_toml(folder, gw_id, env.cloud_port, metrics_port, section))],
                stdout=subprocess.DEVNULL, stderr=out, cwd=ROOT)
        try:
            gateway_ready(proc, metrics_port, log)
            count = Count(env.args.messages * shape)
            pub_rate = publish(env, port, shape, run)
            drain(env, gateway_source(gw_id), count)
        finally:
            proc.terminate()
            proc.wait(60)
    finally:
        if local is not None:
            local.stop()
    return count, pub_rate


def measure(env: Env, setup: str, shape: int, run: str) -> dict[str, object]:
    if setup == "bridge":
        count, pub_rate = run_bridge(env, shape, run)
    else:
        count, pub_rate = run_gateway(env, shape, run, external=setup == "external")
    delivered = len(count.keys)
    return {
        "setup": setup, "readings_per_message": shape, "sent": count.sent, "delivered": delivered,
        "lost": count.sent - delivered, "duplicates": count.readings - delivered,
        "readings_s": round(count.rate(env.args.warmup)) if delivered else 0,
        "uplink_bytes_per_reading": round(count.uplink_bytes / max(delivered, 1), 2),
        "publisher_readings_s": round(pub_rate * shape),
    }


# ---------------------------------------------------------------- output

def table(results: list[dict[str, object]]) -> str:
    lines = ["| setup | readings/msg | readings/s | uplink B/reading | lost | duplicates | publisher readings/s |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {LABELS[str(r['setup'])]} | {r['readings_per_message']} | {r['readings_s']} | "
                     f"{r['uplink_bytes_per_reading']} | {r['lost']} | {r['duplicates']} | "
                     f"{r['publisher_readings_s']} |")
    return "\n".join(lines)


def ratios(results: list[dict[str, object]]) -> str:
    lines = ["| gateway / bridge | readings/msg | readings/s | uplink bytes per reading |", "|---|---|---|---|"]
    by = {(r["setup"], r["readings_per_message"]): r for r in results}
    for (setup, shape), r in by.items():
        base = by.get(("bridge", shape))
        if setup == "bridge" or base is None:
            continue
        speed = float(str(r["readings_s"])) / max(float(str(base["readings_s"])), 1.0)
        size = float(str(r["uplink_bytes_per_reading"])) / max(float(str(base["uplink_bytes_per_reading"])), 1e-9)
        lines.append(f"| {LABELS[str(setup)]} | {shape} | {speed:.2f}x | {size:.3f}x |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--messages", type=int, default=20000, help="messages per setup and shape")
    ap.add_argument("--shapes", default="1,10", help="readings per message, comma-separated")
    ap.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated, of {', '.join(SETUPS)}")
    ap.add_argument("--drain-s", type=float, default=60.0, help="wait this long after publishing for the rest")
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction left out at each end of the rate")
    ap.add_argument("--stock-queue", action="store_true",
                    help="leave mosquitto's default queue limit (1000 messages per client) on the local brokers")
    args = ap.parse_args()
    args.shapes = [int(s) for s in args.shapes.split(",")]
    args.setups = args.setups.split(",")
    if not set(args.setups) <= set(SETUPS):
        ap.error(f"--setups: choose from {', '.join(SETUPS)}")
    return args


def main() -> None:
    args = parse_args()
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="vs-bridge-") as name:
        tmp = Path(name)
        tmp.chmod(0o755)  # see MosquittoProcess
        cloud_port = free_port()
        cloud = MosquittoProcess(cloud_conf(cloud_port), cloud_port, tmp / "cloud")
        try:
            cloud.wait_listening()
            tap = CloudTap(cloud_port)
            env = Env(args, cloud_port, tap, tmp)
            for shape in args.shapes:
                for setup in args.setups:
                    results.append(measure(env, setup, shape, f"r{len(results)}"))
                    print(json.dumps(results[-1]), flush=True)
            tap.close()
        finally:
            cloud.stop()
    print(table(results))
    print()
    print(ratios(results))


if __name__ == "__main__":
    main()
