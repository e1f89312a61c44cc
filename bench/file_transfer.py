"""File upload on the bulk lane: goodput against a byte-rate cap, bytes on the wire per file byte,
and what an upload does to control and live telemetry latency.

    python bench/file_transfer.py [--size-mb 20] [--caps-kb 256,1024,4096] [--samples 100]

The gateway runs as its own process (``python -m gateway run``) with mosquitto as the cloud broker
and the real sink (``edge-gateway sink --files-dir``) as the receiver, which answers with receipts.
This process is the test device, a telemetry device and a cloud client (as in
``bench/control_latency.py``), and it watches the chunks arrive at the cloud broker.

Rows (one JSON line each):

- ``cap``: an upload of a file sized to last about ``--cap-seconds`` at each ``files.max_bytes_per_s``
  cap; goodput = file bytes / time from the first to the last chunk at the cloud client, and its
  ratio to the cap (the goal: >= 0.9);
- ``wire``: for the uncapped upload, the bytes the broker received for the file (MQTT fixed header,
  topic, packet id and payload of the manifest and every chunk message, counted from what arrived)
  per file byte;
- ``latency``: alert and command round trips (p50/p99, as in ``bench/control_latency.py``) and live
  telemetry latency (a device publishes 50 readings/s; latency = arrival of the batch carrying a
  reading at the cloud client - its publish, so it includes the batch age, 0.5 s here) without an
  upload and during a ``--size-mb`` upload, back to back in the same run, with the ratios. The upload
  is held to ``--latency-cap-kb`` so that it lasts the whole sampling (uncapped on loopback a 20 MB
  file takes well under a second);
- ``uncapped``: the same file without a cap: goodput on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.control_latency import CONFIG, GW, Probe, percentile  # noqa: E402
from bridge.mqtt.connection import MqttConnection  # noqa: E402
from bridge.mqtt.types import ClientSettings, Message  # noqa: E402
from bridge.protocol.codec import decode_batch  # noqa: E402
from bridge.protocol.files import decode_chunk  # noqa: E402
from tests.support import Mosquitto, free_port  # noqa: E402

FILES = """
[files]
chunk_bytes = {chunk}
max_bytes_per_s = {cap}
window = {window}
scan_interval_s = 0.2
"""
TELEMETRY_DEVICE = "tel-dev"
TELEMETRY_HZ = 50.0


def mqtt_publish_bytes(topic: str, payload: bytes) -> int:
    """Bytes of one QoS 1 PUBLISH packet on the wire (MQTT 5 with no properties)."""
    body = 2 + len(topic.encode()) + 2 + 1 + len(payload)
    length_bytes = 1 if body < 128 else 2 if body < 16384 else 3 if body < 2097152 else 4
    return 1 + length_bytes + body


class Watcher:
    """Watches the file topics and the telemetry at the cloud broker."""

    def __init__(self) -> None:
        self.first = self.last = 0.0
        self.chunk_bytes = 0  # chunk data received, duplicates included
        self.wire_bytes = 0
        self.chunks = 0
        self.telemetry_latency_ms: list[float] = []
        self.sent_at: dict[int, float] = {}
        self.arrivals: list[tuple[float, int]] = []  # (time, chunk data received so far)
        self.started = asyncio.Event()  # the first chunk arrived
        self.target = 0  # file bytes expected
        self.done = asyncio.Event()  # that many arrived
        self.drained = asyncio.Event()  # every telemetry reading sent has arrived

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def __call__(self, msg: Message) -> None:
        now = time.perf_counter()
        if "/files/up/" in msg.topic:
            self.wire_bytes += mqtt_publish_bytes(msg.topic, msg.payload)
            if msg.topic.endswith("/chunk"):
                chunk = decode_chunk(msg.payload)
                self.chunk_bytes += len(chunk.data)
                self.chunks += 1
                self.arrivals.append((now, self.chunk_bytes))
                self.first = self.first or now
                self.last = now
                self.started.set()
                if self.target and self.chunk_bytes >= self.target:
                    self.done.set()
        elif msg.topic.endswith("/telemetry"):
            for reading in decode_batch(msg.payload).readings:
                if reading.device == TELEMETRY_DEVICE and reading.seq in self.sent_at:
                    self.telemetry_latency_ms.append((now - self.sent_at.pop(reading.seq)) * 1000)
            if not self.sent_at:
                self.drained.set()


class Bench:
    def __init__(self, tmp: Path, cloud_url: str, watcher: Watcher) -> None:
        self.tmp, self.cloud_url, self.watcher = tmp, cloud_url, watcher
        self.proc: subprocess.Popen[bytes] | None = None
        self.sink: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.data = tmp

    def start(self, name: str, cap: float, window: int, chunk: int) -> None:
        run = self.tmp / name
        run.mkdir()
        self.port, self.data = free_port(), run / "data"
        cfg = run / "gateway.toml"
        cfg.write_text(CONFIG.format(gw=GW, data=self.data, port=self.port, cloud=self.cloud_url, cap=0,
                                     protocol="5") + FILES.format(chunk=chunk, cap=cap, window=window))
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(cfg)], cwd=ROOT)
        self.sink = subprocess.Popen([sys.executable, "-m", "gateway", "sink", "--url", self.cloud_url,
                                      "--db", str(run / "sink.db"), "--files-dir", str(run / "received")], cwd=ROOT)

    def stop(self) -> None:
        for proc in (self.proc, self.sink):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(60)

    def drop(self, size: int) -> Path:
        """A file of ``size`` random bytes, renamed into the outbox."""
        outbox = self.data / "files" / "outbox"
        outbox.mkdir(parents=True, exist_ok=True)
        tmp = outbox / ".upload.tmp"
        with tmp.open("wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 1 << 20))
                f.write(block)
                left -= len(block)
        target = outbox / f"upload-{size}.bin"
        os.replace(tmp, target)
        return target

    async def wait_chunks(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self.watcher.done.wait(), timeout_s)
        except asyncio.TimeoutError:
            raise RuntimeError(f"only {self.watcher.chunk_bytes} of {self.watcher.target} file bytes arrived") from None


async def telemetry(probe_port: int, watcher: Watcher, stop: asyncio.Event) -> None:
    conn = await MqttConnection.open(f"mqtt://127.0.0.1:{probe_port}",
                                     ClientSettings(client_id=TELEMETRY_DEVICE, protocol="3.1.1"))
    seq = 0
    try:
        while not stop.is_set():
            seq += 1
            watcher.sent_at[seq] = time.perf_counter()
            conn.publish(f"devices/{TELEMETRY_DEVICE}/telemetry",
                         json.dumps({"seq": seq, "ts": time.time(), "humidity": 40.0 + seq % 7}).encode(), 1)
            await asyncio.sleep(1 / TELEMETRY_HZ)
    finally:
        await conn.close()


def steady_goodput(arrivals: list[tuple[float, int]], skip_bytes: int) -> tuple[float, float]:
    """Bytes per second between the arrival that passed ``skip_bytes`` (the token bucket's initial
    burst) and the last one, and that span in seconds."""
    start = next(((t, b) for t, b in arrivals if b >= skip_bytes), arrivals[0])
    end = arrivals[-1]
    span = end[0] - start[0]
    return ((end[1] - start[1]) / span if span > 0 else 0.0), span


async def latency_row(bench: Bench, probe: Probe, watcher: Watcher, samples: int, upload: int) -> dict[str, Any]:
    """``samples`` samples with telemetry flowing (with ``upload``: while that file is sent, fewer if
    it is through first); then the telemetry already sent is waited for (its batches close by age)."""
    watcher.reset()
    stop = asyncio.Event()
    tel = asyncio.create_task(telemetry(bench.port, watcher, stop))
    if upload:
        watcher.target = upload
        bench.drop(upload)
        await asyncio.wait_for(watcher.started.wait(), 60)  # the upload is under way
    got = await probe.sample(samples, until=lambda: upload > 0 and watcher.chunk_bytes >= upload)
    stop.set()
    await tel
    if watcher.sent_at:  # the last batches close by age
        watcher.drained.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(watcher.drained.wait(), 5)
    row: dict[str, Any] = {"row": "latency", "upload_bytes": upload, "uploaded_during_sampling": watcher.chunk_bytes}
    for kind in ("alert", "command"):
        values = got[kind]
        row[kind] = {"n": len(values), "p50_ms": round(percentile(values, 0.5), 2),
                     "p99_ms": round(percentile(values, 0.99), 2)} if values else {}
    tl = watcher.telemetry_latency_ms
    row["telemetry"] = {"n": len(tl), "p50_ms": round(percentile(tl, 0.5), 1),
                        "p99_ms": round(percentile(tl, 0.99), 1)} if tl else {}
    row["timeouts"] = len(got["timeouts"])
    return row


async def run(args: argparse.Namespace) -> None:
    watcher = Watcher()
    broker = Mosquitto(extra_conf="set_tcp_nodelay true")
    broker.start()
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            await measure(args, watcher, broker.url, Path(tmpdir))
    finally:
        broker.stop()


async def measure(args: argparse.Namespace, watcher: Watcher, cloud_url: str, tmpdir: Path) -> None:
    cloud = await MqttConnection.open(cloud_url, ClientSettings(client_id="bench-files", protocol="5"),
                                      on_message=watcher)
    await cloud.subscribe([(f"edge/{GW}/files/up/+/chunk", 0), (f"edge/{GW}/files/up/+/manifest", 0),
                           (f"edge/{GW}/telemetry", 0)])
    bench = Bench(tmpdir, cloud_url, watcher)
    chunk = args.chunk_kb * 1024
    try:
        bench.start("latency", args.latency_cap_kb * 1024, args.window, chunk)
        probe = Probe(cloud_url)
        await probe.connect_cloud()
        await probe.connect_device(bench.port)
        await probe.ready()
        size = args.size_mb << 20
        for _ in range(args.rounds):  # alternating, back to back: the machine's load hits both alike
            base = await latency_row(bench, probe, watcher, args.samples, 0)
            print(json.dumps(base), flush=True)
            during = await latency_row(bench, probe, watcher, args.samples, size)
            await bench.wait_chunks(600)
            for kind in ("alert", "command", "telemetry"):
                if base[kind] and during[kind]:
                    during[kind]["p99_vs_without"] = round(during[kind]["p99_ms"] / base[kind]["p99_ms"], 2)
            print(json.dumps(during), flush=True)
        print(json.dumps({"row": "wire", "file_bytes": size, "chunk_bytes": chunk,
                          "chunk_data_received": watcher.chunk_bytes, "wire_bytes": watcher.wire_bytes,
                          "wire_per_file_byte": round(watcher.wire_bytes / size, 4)}), flush=True)
        await probe.close()
        bench.stop()
        watcher.reset()
        watcher.target = size
        bench.start("uncapped", 0, args.window, chunk)
        bench.drop(size)
        await bench.wait_chunks(600)
        print(json.dumps({"row": "uncapped", "file_bytes": size, "window": args.window,
                          "goodput_bytes_per_s": round(size / max(1e-9, watcher.last - watcher.first))}), flush=True)
        bench.stop()
        for cap_kb in (int(c) for c in args.caps_kb.split(",")):
            cap = cap_kb * 1024
            size = int(cap * args.cap_seconds)
            watcher.reset()
            watcher.target = size
            bench.start(f"cap-{cap_kb}", cap, args.window, chunk)
            bench.drop(size)
            await bench.wait_chunks(args.cap_seconds * 5 + 60)
            # the bucket starts full (one second of the cap): goodput once that burst is spent
            goodput, took = steady_goodput(watcher.arrivals, max(65536, cap) + chunk)
            print(json.dumps({"row": "cap", "cap_bytes_per_s": cap, "file_bytes": size, "seconds": round(took, 2),
                              "goodput_bytes_per_s": round(goodput), "goodput_vs_cap": round(goodput / cap, 3)}),
                  flush=True)
            bench.stop()
    finally:
        bench.stop()
        await cloud.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=20)
    ap.add_argument("--caps-kb", default="256,1024,4096")
    ap.add_argument("--cap-seconds", type=float, default=10.0)
    ap.add_argument("--latency-cap-kb", type=int, default=2048,
                    help="files.max_bytes_per_s of the latency rows, so the upload lasts the sampling")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="latency rows without / with an upload, alternating")
    ap.add_argument("--chunk-kb", type=int, default=64)
    ap.add_argument("--window", type=int, default=2)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
