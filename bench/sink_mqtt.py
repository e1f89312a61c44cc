"""The whole sink through a real mosquitto: per-message commit vs group commit, SQLite and PostgreSQL,
in one run.

    python bench/sink_mqtt.py [--batches 2000] [--readings 100] [--stores sqlite,postgresql]

A backlog of ``--batches`` telemetry envelopes (the real codec, 20 devices x 3 metrics, a duplicate
every 10th) waits in mosquitto for the sink's persistent session; the timed part is a sink starting,
draining it and acknowledging every message: receive, decode, validate, store, PUBACK. The broker
runs with mosquitto's defaults (``max_inflight_messages 20``) except ``max_queued_messages 0`` (a
sink's backlog must not be dropped; see docs/OPERATIONS.md). Modes:

- ``per message``: ``GroupLimits(max_messages=1)``, one transaction and one PUBACK per message, as
  the sink did before group commit;
- ``group``: the sink's defaults (500 messages / 50,000 readings per transaction; MQTT 5 Receive
  Maximum 1000, so the broker's window is not mosquitto's 20);
- ``group 3.1.1``: the same over MQTT 3.1.1, where the broker's window (20) applies.

SQLite is durable (fsync per commit); PostgreSQL is a fresh server from tests/postgres.py with fsync
on. Prints readings/s and the ratio to per-message commit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sink_ingest import batches  # noqa: E402
from bridge.cloud.sink import Protocol, Sink  # noqa: E402
from bridge.cloud.sink_group import GroupLimits  # noqa: E402
from bridge.cloud.sink_port import open_sink_store  # noqa: E402
from bridge.mqtt.backoff import DecorrelatedJitter  # noqa: E402
from bridge.mqtt.connection import MqttConnection  # noqa: E402
from bridge.mqtt.types import ClientSettings  # noqa: E402
from bridge.protocol.codec import encode_batch  # noqa: E402
from bridge.protocol.topics import CloudTopics  # noqa: E402
from tests.postgres import SINK_PASSWORD, PostgresServer  # noqa: E402
from tests.support import free_port, running_mosquitto  # noqa: E402

MODES: dict[str, tuple[GroupLimits, Protocol]] = {
    "per message": (GroupLimits(max_messages=1), "5"),
    "group": (GroupLimits(), "5"),
    "group 3.1.1": (GroupLimits(), "3.1.1"),
}


def envelopes(count: int, size: int) -> list[bytes]:
    todo = batches(0, count, size)
    todo += todo[::10]
    return [encode_batch(b.gateway, b.seq, b.readings, stream=b.stream, created_ms=b.created_ms) for b in todo]


async def publish(url: str, payloads: list[bytes]) -> None:
    topic = CloudTopics("gw-0").telemetry
    conn = await MqttConnection.open(url, ClientSettings(client_id=f"bench-pub-{free_port()}", max_inflight=200))
    try:
        window = conn.info.inflight_window  # mosquitto's receive maximum: 20 by default
        for start in range(0, len(payloads), window):
            await asyncio.gather(*(conn.publish(topic, p, qos=1) for p in payloads[start:start + window]))
    finally:
        await conn.close()


async def run_sink(sink: Sink, until: int | None) -> float:
    """Run ``sink`` until it has handled ``until`` messages (None: until subscribed); seconds taken."""
    stop = asyncio.Event()
    start = time.perf_counter()
    task = asyncio.create_task(sink.run(stop))
    try:
        while (sink.counters.handled < until) if until is not None else not sink.ready.is_set():
            if task.done():
                task.result()
            await asyncio.sleep(0.002)
        return time.perf_counter() - start
    finally:
        stop.set()
        await task


async def drain(url: str, db: str, mode: str, payloads: list[bytes]) -> tuple[float, int, int]:
    """(readings/s, groups, largest group) of a sink draining ``payloads`` into ``db``."""
    limits, protocol = MODES[mode]
    client_id = f"bench-{free_port()}"
    with open_sink_store(db) as store:
        def sink() -> Sink:
            return Sink(store, [url], protocol=protocol, group_limits=limits, client_id=client_id,
                        backoff=DecorrelatedJitter(0.05, 0.5))

        await run_sink(sink(), None)  # creates the persistent session
        await publish(url, payloads)
        timed = sink()
        seconds = await run_sink(timed, len(payloads))
        c = timed.counters
        return c.readings / seconds, c.groups, c.largest_group


def database(kind: str, tmp: Path, server: PostgresServer | None) -> str:
    if kind == "sqlite":
        return str(tmp / f"sink-{free_port()}.sqlite")
    assert server is not None
    return server.new_database()


async def main_async(args: argparse.Namespace) -> None:
    payloads = envelopes(args.batches, args.readings)
    print(f"{len(payloads)} envelopes of {args.readings} readings (10% duplicates) queued in mosquitto, "
          f"{os.cpu_count()} cores")
    config = "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"
    port = free_port()
    stores = args.stores.split(",")
    server = PostgresServer(fsync=True) if "postgresql" in stores else None
    os.environ["PGPASSWORD"] = SINK_PASSWORD
    with running_mosquitto(port=port, config=config.replace("{port}", str(port))) as broker, \
            tempfile.TemporaryDirectory() as tmp:
        try:
            if server is not None:
                server.start()
            for kind in stores:
                base = 0.0
                for mode in MODES:
                    rate, groups, largest = await drain(broker.url, database(kind, Path(tmp), server), mode, payloads)
                    base = base or rate
                    print(f"  {kind:10} {mode:12}: {rate:10,.0f} readings/s  ({rate / base:.2f}x)"
                          f"  {groups} transactions, largest {largest} messages")
        finally:
            if server is not None:
                server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=2000, help="envelopes in the backlog (before duplicates)")
    ap.add_argument("--readings", type=int, default=100, help="readings per envelope")
    ap.add_argument("--stores", default="sqlite,postgresql")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
