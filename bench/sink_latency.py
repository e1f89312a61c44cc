"""Time from a gateway's PUBACK to its batch being queryable in the sink's store, SQLite vs
PostgreSQL, at several message rates, in one run.

    python bench/sink_latency.py [--rates 20,200,800] [--messages 1500] [--batch-readings 50]
                                 [--poll-ms 2] [--stores sqlite,postgres]

For each store: a fresh mosquitto, one ``edge-gateway sink`` process (durable commits: SQLite
``synchronous=FULL``; PostgreSQL from tests/postgres.py with ``fsync=on``), and a publisher that
sends fleet-generator batches (real envelopes, QoS 1) at a steady rate, noting when each PUBACK
arrives. A reader thread with its own database connection polls the ledger every ``--poll-ms`` and
notes when each batch key first shows up. The figure is "first seen by the reader minus PUBACK seen by
the publisher": it includes the broker's forwarding, the sink's decode, its commit and the polling
(about half a poll interval on average). It can be negative: mosquitto forwards a message to the
sink as it sends the PUBACK, so a fast sink commits before the publisher has read its PUBACK.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._bridge import MosquittoProcess, cloud_conf, free_port  # noqa: E402
from bridge.cloud.fleet_data import Plan, fleet  # noqa: E402
from bridge.mqtt.connection import MqttConnection  # noqa: E402
from bridge.mqtt.types import ClientSettings  # noqa: E402
from tests.postgres import SINK_PASSWORD, PostgresServer  # noqa: E402

CLI = [sys.executable, "-m", "gateway"]
Key = tuple[str, str, int]
LEDGER = "SELECT gateway, stream, seq FROM batches WHERE lane = 'telemetry'"


class Reader(threading.Thread):
    """Polls the ledger and notes when each key first appears (monotonic seconds)."""

    def __init__(self, db: str, poll_s: float) -> None:
        super().__init__(daemon=True)
        self.db, self.poll_s = db, poll_s
        self.seen: dict[Key, float] = {}
        self.stop = threading.Event()

    def _rows(self) -> list[Any]:
        if self.db.startswith("postgresql://"):
            import psycopg

            with psycopg.connect(self.db, autocommit=True) as pg:
                while not self.stop.is_set():
                    self._note(pg.execute(LEDGER).fetchall())
            return []
        while not Path(self.db).exists() and not self.stop.is_set():
            time.sleep(self.poll_s)
        conn = sqlite3.connect(f"{Path(self.db).resolve().as_uri()}?mode=ro", uri=True)
        while not self.stop.is_set():
            try:
                self._note(conn.execute(LEDGER).fetchall())
            except sqlite3.OperationalError:  # the sink has not created its tables yet
                time.sleep(self.poll_s)
        return []

    def _note(self, rows: list[Any]) -> None:
        now = time.monotonic()
        for gw, stream, seq in rows:
            self.seen.setdefault((gw, stream, int(seq)), now)
        time.sleep(self.poll_s)

    def run(self) -> None:
        self._rows()


async def publish(url: str, rate: float, messages: int, batch_readings: int) -> dict[Key, float]:
    """Send ``messages`` batches at ``rate`` per second; return when each PUBACK arrived."""
    plan = Plan(fleet(20, 5, seed=7, start_ms=int(time.time() * 1000)), random.Random(7),
                batch_readings=batch_readings)
    conn = await MqttConnection.open(url, ClientSettings(client_id="latency-publisher", protocol="5",
                                                         max_inflight=1000))
    acked: dict[Key, float] = {}

    def note(key: Key, _done: asyncio.Future[None]) -> None:
        acked.setdefault(key, time.monotonic())

    pending: list[asyncio.Future[None]] = []
    start = time.monotonic()
    try:
        for i, send in enumerate(plan.sends(messages)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            m = send.message
            while conn.free_slots == 0:  # the broker is behind: wait for a PUBACK rather than overrun the window
                await asyncio.wait([f for f in pending if not f.done()], return_when=asyncio.FIRST_COMPLETED)
            fut = conn.publish(m.topic, send.payload, qos=1)
            key: Key = (m.gateway, m.stream, m.seq)
            fut.add_done_callback(functools.partial(note, key))
            pending.append(fut)
        await asyncio.gather(*pending)
    finally:
        await conn.close()
    return acked


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_store(kind: str, rates: list[float], args: argparse.Namespace, pg: PostgresServer | None) -> None:
    for rate in rates:
        with tempfile.TemporaryDirectory(prefix="sink-latency-") as tmp:
            folder = Path(tmp)
            db = pg.new_database() if pg is not None else str(folder / "sink.sqlite")
            port = free_port()
            broker = MosquittoProcess(cloud_conf(port), port, folder / "mosquitto")
            broker.wait_listening()
            url = f"mqtt://127.0.0.1:{port}"
            log = folder / "sink.log"
            with log.open("wb") as out:
                sink = subprocess.Popen([*CLI, "sink", "--url", url, "--db", db, "--log-level", "info"],
                                        stdout=subprocess.DEVNULL, stderr=out)
            reader = Reader(db, args.poll_ms / 1000)
            try:
                deadline = time.monotonic() + 30
                while "sink subscribed" not in log.read_text(errors="replace"):
                    if time.monotonic() > deadline or sink.poll() is not None:
                        raise RuntimeError(f"the sink did not subscribe: {log.read_text()}")
                    time.sleep(0.05)
                reader.start()
                acked = asyncio.run(publish(url, rate, args.messages, args.batch_readings))
                deadline = time.monotonic() + 60
                while not acked.keys() <= reader.seen.keys() and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                reader.stop.set()
                sink.terminate()
                sink.wait(20)
                broker.stop()
            lat = [(reader.seen[k] - t) * 1000 for k, t in acked.items() if k in reader.seen]
            missing = len(acked) - len(lat)
            print(f"{kind:>9} {rate:>7.0f} {rate * args.batch_readings:>10.0f} {percentile(lat, 0.5):>8.1f} "
                  f"{percentile(lat, 0.99):>8.1f} {max(lat):>8.1f}  {len(lat)}"
                  + (f" ({missing} never seen)" if missing else ""), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="20,200,800", help="messages per second, one run each")
    ap.add_argument("--messages", type=int, default=1500, help="batches per run")
    ap.add_argument("--batch-readings", type=int, default=50)
    ap.add_argument("--poll-ms", type=float, default=2.0, help="how often the reader polls the ledger")
    ap.add_argument("--stores", default="sqlite,postgres")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    print(f"{args.messages} batches of {args.batch_readings} readings per run, reader polls every {args.poll_ms} ms")
    print(f"{'store':>9} {'msgs/s':>7} {'readings/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  batches")
    for kind in args.stores.split(","):
        if kind == "postgres":
            pg = PostgresServer(fsync=True)
            pg.start()
            os.environ["PGPASSWORD"] = SINK_PASSWORD
            try:
                run_store(kind, rates, args, pg)
            finally:
                pg.stop()
        else:
            run_store(kind, rates, args, None)


if __name__ == "__main__":
    main()
