"""Alert and command latency through the gateway while it receives a download, vs idle, in one run.

    python bench/download_command_latency.py [--samples 100] [--file-mb 8] [--window 8]

The gateway runs as its own process with mosquitto as the cloud broker, as in
``bench/control_latency.py`` (whose probe is used: one device on the local broker answering
``ping``, one cloud client; alert = device publish -> alert record at the cloud client, command =
cloud publish -> the device's response record at the cloud client). Rows:

- ``idle``: nothing else going on;
- ``download``: while ``--file-mb`` MB files are pushed to the gateway one after the other, at
  loopback speed, with :class:`bridge.cloud.files_push.FilePusher` (64 KiB chunks, ``--window``
  in flight): every chunk is written and fdatasync'ed twice by the gateway (in its worker thread)
  and each file is read back and hashed before it is installed.

Each row is a JSON line with n, p50, p99 and max per kind, the files installed and MB/s during the
row, the gateway's ``missing`` statuses per MB downloaded (each a control record the sink stores:
mostly ``progress``), and p99 / idle p99. The data directory is under ``--dir`` (a real disk: tmpfs makes fdatasync
free). Needs the mosquitto binary.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.control_latency import GW, GatewayProcess, Probe, print_rows, summary  # noqa: E402
from bridge.cloud.files_push import push_file  # noqa: E402
from bridge.mqtt.types import ClientSettings  # noqa: E402
from bridge.protocol.file_topics import FileTopics  # noqa: E402
from bridge.protocol.topics import CloudTopics  # noqa: E402
from bridge.transfer.plan import plan_file  # noqa: E402
from tests.support import Mosquitto  # noqa: E402


async def push_forever(url: str, source: Path, window: int, stop: asyncio.Event, done: list[int]) -> None:
    """Push ``source`` again and again (a new id each time) until ``stop``; ``done`` gets, for each
    one installed, how many ``missing`` statuses (control records) the gateway sent about it."""
    topics = FileTopics(CloudTopics(GW).prefix)
    n = 0
    while not stop.is_set():
        n += 1
        manifest = plan_file(source, name=f"bench-{n}.bin")
        outcome = await push_file(url, ClientSettings(client_id=f"bench-pusher-{n}", max_inflight=window + 2),
                                  topics, source, manifest, window=window, timeout_s=300)
        if outcome.state != "received":
            raise RuntimeError(f"push {n}: {outcome}")
        done.append(outcome.missing_heard)


async def main(args: argparse.Namespace) -> None:
    mosq = Mosquitto(extra_conf="set_tcp_nodelay true")
    mosq.start()
    probe = Probe(mosq.url)
    rows: list[dict[str, Any]] = []
    try:
        await probe.connect_cloud()
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            source = Path(tmp) / "payload.bin"
            source.write_bytes(os.urandom(args.file_mb * 1024 * 1024))
            gw = GatewayProcess(Path(tmp), mosq.url)
            gw.start()
            try:
                await probe.connect_device(gw.port)
                await probe.ready()
                rows.append(summary("idle", await probe.sample(args.samples)))
                stop, done = asyncio.Event(), list[int]()
                pushing = asyncio.ensure_future(push_forever(mosq.url, source, args.window, stop, done))
                await asyncio.sleep(0.5)  # the first chunks are flowing
                started = time.perf_counter()
                got = await probe.sample(args.samples)
                took = time.perf_counter() - started
                stop.set()
                installed = len(done)
                await pushing
                rows.append(summary("download", got, files=installed, seconds=round(took, 1),
                                    mb_per_s=round(installed * args.file_mb / took, 1),
                                    statuses_per_mb=round(sum(done) / max(1, len(done)) / args.file_mb, 1)))
            finally:
                gw.stop()
    finally:
        await probe.close()
        mosq.cleanup()
    print_rows(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=100, help="alert + command pairs per row")
    parser.add_argument("--file-mb", type=int, default=8)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--dir", default="/var/tmp")
    asyncio.run(main(parser.parse_args()))
