"""The sink's file receiver through a real mosquitto: goodput of one upload and how long the event
loop is held meanwhile, with the disk work in a thread (the sink) against the same work inline on
the loop (the baseline), in one run.

    python bench/sink_files.py [--mb 20] [--chunk-kib 64] [--window 50] [--dir PATH]

A plain MQTT client publishes one file's manifest and chunks (QoS 1, ``--window`` in flight) to a
sink with a durable SQLite store and ``--files-dir`` on ``--dir`` (default: a temp dir; give a path
on the disk you care about). Each chunk is synced twice (data, then its mark) before its row is
committed and it is acknowledged. A probe on the sink's loop sleeps 5 ms at a time and records how
late it wakes: that lateness is what telemetry and control messages would wait too. Prints MB/s,
the probe's p50/p99/max lateness, and the ratios of inline to threaded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.cloud.file_receiver import FileOptions  # noqa: E402
from bridge.cloud.sink import Sink  # noqa: E402
from bridge.cloud.sink_port import open_sink_store  # noqa: E402
from bridge.mqtt.backoff import DecorrelatedJitter  # noqa: E402
from bridge.mqtt.connection import MqttConnection  # noqa: E402
from bridge.mqtt.types import ClientSettings, Message  # noqa: E402
from bridge.protocol.files import decode_receipt, encode_chunk, encode_manifest  # noqa: E402
from bridge.protocol.topics import CloudTopics  # noqa: E402
from bridge.transfer.plan import plan_file, read_chunk  # noqa: E402
from tests.support import running_mosquitto  # noqa: E402

T = TypeVar("T")
P = ParamSpec("P")
PROBE_S = 0.005


async def inline(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    return fn(*args, **kwargs)


async def probe(lateness: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(PROBE_S)
        lateness.append(time.perf_counter() - start - PROBE_S)


async def upload(url: str, path: Path, chunk_bytes: int, window: int) -> None:
    gw = CloudTopics("gw-1")
    manifest = plan_file(path, chunk_size=chunk_bytes)
    stored = asyncio.Event()

    def on_receipt(message: Message) -> None:
        if decode_receipt(message.payload).state == "stored":
            stored.set()

    conn = await MqttConnection.open(url, ClientSettings(client_id="bench-gw", max_inflight=window),
                                     on_message=on_receipt)
    try:
        await conn.subscribe([(gw.files.filter("up", "receipt"), 1)])
        await conn.publish(gw.files.manifest("up", manifest.id), encode_manifest(manifest))
        pending: set[asyncio.Future[None]] = set()
        for index in range(manifest.chunks):
            data, digest = read_chunk(path, manifest, index)
            payload = encode_chunk(manifest.id, index, index * chunk_bytes, data, sha256=digest)
            pending.add(conn.publish(gw.files.chunk("up", manifest.id), payload))
            if len(pending) >= window:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.wait_for(stored.wait(), 600)
    finally:
        await conn.close()


async def one_run(url: str, work: Path, source: Path, args: argparse.Namespace,
                  threaded: bool) -> tuple[float, list[float]]:
    root = work / ("threaded" if threaded else "inline")
    with open_sink_store(work / f"sink-{root.name}.sqlite", durable=not args.no_db_sync) as store:
        sink = Sink(store, [url], backoff=DecorrelatedJitter(0.05, 0.5), persistent=False,
                    files=FileOptions(root, max_bytes=2**40))
        assert sink.files is not None
        if not threaded:
            sink.files._offload = inline  # the baseline: the same disk work on the loop
        stop, probing = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        await asyncio.wait_for(sink.ready.wait(), 10)
        lateness: list[float] = []
        prober = asyncio.create_task(probe(lateness, probing))
        start = time.perf_counter()
        await upload(url, source, args.chunk_kib * 1024, args.window)
        took = time.perf_counter() - start
        probing.set()
        stop.set()
        await asyncio.gather(prober, task)
    return took, lateness


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] if len(values) > 1 else values[0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=20.0)
    parser.add_argument("--chunk-kib", type=int, default=64)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--no-db-sync", action="store_true",
                        help="SQLite without fsync per commit (to see what the store's commits cost the loop)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sink-files-", dir=args.dir))
    try:
        await runs(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def runs(work: Path, args: argparse.Namespace) -> None:
    source = work / "upload.bin"
    source.write_bytes(os.urandom(int(args.mb * 1024 * 1024)))
    figures: dict[str, tuple[float, float, float, float]] = {}
    with running_mosquitto(extra_conf="max_inflight_messages 0\n") as broker:
        for threaded in (False, True, False, True):  # alternating: a busy neighbour hits both
            took, late = await one_run(broker.url, work, source, args, threaded)
            name = "threaded" if threaded else "inline"
            mbps = args.mb / took
            figures[name] = (mbps, quantile(late, 0.5) * 1e3, quantile(late, 0.99) * 1e3, max(late) * 1e3)
            print(f"{name:9} {mbps:7.1f} MB/s   loop late p50 {figures[name][1]:6.2f} ms  p99 "
                  f"{figures[name][2]:6.2f} ms  max {figures[name][3]:7.2f} ms", flush=True)
            for p in (work / name).rglob("*"):
                if p.is_file():
                    p.unlink()
    (inl, thr) = figures["inline"], figures["threaded"]
    print(f"threaded / inline (last runs): goodput {thr[0] / inl[0]:.2f}, loop late p99 {thr[2] / inl[2]:.2f}, "
          f"max {thr[3] / inl[3]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
