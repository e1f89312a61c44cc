"""What writing download chunks does to the event loop: chunks written inline vs in a worker thread.

    python bench/download_write_lag.py [--chunks 64] [--chunk-bytes 65536] [--rounds 3] [--dir /var/tmp]

Each chunk a gateway receives is written with :meth:`bridge.transfer.assembly.Assembly.write`: one
``pwrite`` and an ``fdatasync`` of the data, then one byte and an ``fdatasync`` of the progress marks.
Everything else the gateway does (commands, telemetry, the uplink) runs on the same event loop, so
while a write blocks it, a command waits. This script writes ``--chunks`` chunks one after the other,
as the download task does, while a ticker on the loop asks to wake every 1 ms and records how late
each wake-up is (the loop lag: what a command arriving at that moment would wait on top of its own
work). Modes, alternating for ``--rounds`` rounds: ``inline`` (the write called on the loop) and
``thread`` (``await asyncio.to_thread(assembly.write, chunk)``, what gateway.files.download does).
Printed per mode: lag p50 / p99 / max and the time to write all the chunks, and the ratio thread /
inline. The directory must be on a real disk (tmpfs makes fdatasync free).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from bridge.protocol.files import Manifest, decode_chunk, encode_chunk, new_file_id
from bridge.transfer.assembly import Assembly


def chunks_of(data: bytes, chunk_bytes: int) -> tuple[Manifest, list[bytes]]:
    pieces = [data[i:i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
    m = Manifest(new_file_id(), "bench.bin", len(data), chunk_bytes, hashlib.sha256(data).hexdigest(),
                 tuple(hashlib.sha256(p).hexdigest() for p in pieces))
    return m, [encode_chunk(m.id, i, i * chunk_bytes, p) for i, p in enumerate(pieces)]


async def one_run(work: Path, data: bytes, chunk_bytes: int, in_thread: bool) -> tuple[list[float], float]:
    manifest, payloads = chunks_of(data, chunk_bytes)
    assembly = Assembly.open(work, manifest)
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not done.is_set():
            asked = loop.time()
            await asyncio.sleep(0.001)
            lags.append(max(0.0, loop.time() - asked - 0.001))

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    for payload in payloads:
        chunk = decode_chunk(payload)
        if in_thread:
            await asyncio.to_thread(assembly.write, chunk)
        else:
            assembly.write(chunk)
            await asyncio.sleep(0)  # the download task yields between messages either way
    took = time.perf_counter() - started
    done.set()
    await tick
    assembly.discard()
    return lags, took


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


async def main(args: argparse.Namespace) -> None:
    data = os.urandom(args.chunks * args.chunk_bytes)
    results: dict[str, tuple[list[float], list[float]]] = {"inline": ([], []), "thread": ([], [])}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for _ in range(args.rounds):
            for mode in ("inline", "thread"):
                lags, took = await one_run(Path(tmp), data, args.chunk_bytes, mode == "thread")
                results[mode][0].extend(lags)
                results[mode][1].append(took)
    print(f"{args.chunks} chunks of {args.chunk_bytes} bytes, {args.rounds} rounds, in {args.dir}")
    print(f"{'mode':8} {'lag p50 ms':>11} {'lag p99 ms':>11} {'lag max ms':>11} {'write s':>9}")
    rows = {}
    for mode, (all_lags, times) in results.items():
        rows[mode] = (pct(all_lags, 0.5), pct(all_lags, 0.99), max(all_lags) * 1000, statistics.median(times))
        print(f"{mode:8} {rows[mode][0]:11.2f} {rows[mode][1]:11.2f} {rows[mode][2]:11.2f} {rows[mode][3]:9.3f}")
    inline, thread = rows["inline"], rows["thread"]
    print(f"thread / inline: lag p99 {thread[1] / max(inline[1], 1e-9):.2f}, "
          f"max {thread[2] / max(inline[2], 1e-9):.2f}, write time {thread[3] / inline[3]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--chunk-bytes", type=int, default=65536)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp")
    asyncio.run(main(parser.parse_args()))
