"""What the device-file test costs every message ingest takes, in process (no broker):

    python bench/device_file_route.py [--messages 300000] [--rounds 5]

The gateway hands every accepted PUBLISH of the local broker to ``DeviceIntake.route(offer)``,
which takes device file messages out (manifests and chunks) before the telemetry ingest queue.
This script times that hand-off for telemetry topics of 300 devices (whole-object and per-metric
topics, a metric named ``files`` among them), against the bare ``Ingest.offer`` in the same run,
and against the decoder's cost per message (the work a telemetry message goes on to), and prints
nanoseconds per message (best of ``--rounds``) and the ratio routed / bare.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config_sections import DecodeSection, FilesSection, TopicsSection  # noqa: E402
from gateway.files.device_contract import DeviceFileTopics  # noqa: E402
from gateway.files.device_intake import DeviceIntake  # noqa: E402
from gateway.files.device_receiver import DeviceReceiver, Limits  # noqa: E402
from gateway.process.decode import Decoder  # noqa: E402
from gateway.source.ingest import Ingest  # noqa: E402


def topics(n: int) -> list[str]:
    kinds = ("devices/dev-{:04d}/telemetry", "devices/dev-{:04d}/telemetry/temperature",
             "devices/dev-{:04d}/telemetry/files")
    return [kinds[i % 3].format(i % 300) for i in range(n)]


def best(rounds: int, run: Callable[[], None], n: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times) / n * 1e9


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    msgs = topics(args.messages)
    payload = b'{"temperature": 21.5}'
    f = FilesSection()
    receiver = DeviceReceiver(Path("/nonexistent"), DeviceFileTopics(TopicsSection()),
                              Limits(True, f.max_device_file_bytes, f.max_disk_bytes, f.device_upload_timeout_s),
                              lambda *_a: None, lambda: 0)
    intake = DeviceIntake(receiver, publish=_nowhere)
    ingest = Ingest(args.messages + 1, lambda _t: None)
    offer, routed = ingest.offer, intake.route(ingest.offer)
    decoder = Decoder(TopicsSection(), DecodeSection())

    def feed(fn: Callable[[str, bytes], None]) -> Callable[[], None]:
        def run() -> None:
            for topic in msgs:
                fn(topic, payload)
            ingest.drain(len(msgs) + 1)
        return run

    def decode() -> None:
        for topic in msgs:
            decoder.decode(topic, payload, 1_700_000_000_000)

    bare, with_route = best(args.rounds, feed(offer), len(msgs)), best(args.rounds, feed(routed), len(msgs))
    decoded = best(args.rounds, decode, len(msgs))
    assert len(intake) == 0, "a telemetry topic was taken for a file"
    print(f"ingest offer, bare:           {bare:7.0f} ns/message")
    print(f"ingest offer, routed:         {with_route:7.0f} ns/message  (+{with_route - bare:.0f} ns)")
    print(f"decode (for scale):           {decoded:7.0f} ns/message")
    print(f"routed / bare: {with_route / bare:.2f}   added / (offer + decode): "
          f"{(with_route - bare) / (bare + decoded):.1%}")


async def _nowhere(_topic: str, _payload: bytes) -> None:
    return None


if __name__ == "__main__":
    asyncio.run(main())
