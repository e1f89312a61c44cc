"""How fast the sink's stores take batches: per-message commit vs group commit, SQLite vs PostgreSQL,
one writer, then PostgreSQL with several writer processes on one database, in one run.

    python bench/sink_ingest.py [--batches 400] [--readings 100] [--workers 1,2,4] [--group N]

Each writer stores its own gateways' batches and every 10th batch a second time (a duplicate); no
broker involved. "per message": ``store_batch``, one transaction per batch, as the sink did per MQTT
message before group commit. "group": ``store_group`` with groups of ``--group`` batches (default:
what the sink's :class:`~bridge.cloud.sink_group.GroupLimits` let one transaction take when a
backlog is waiting: 500 messages or 50,000 readings). SQLite runs with ``durable=True`` (fsync per
commit, the sink's default); PostgreSQL is a fresh server from tests/postgres.py with ``fsync=on``
and ``synchronous_commit=on`` (its defaults), in a temp dir on the same disk. Prints readings/s
stored and the ratios (group / per message, PostgreSQL / SQLite).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.cloud.sink_group import GroupLimits  # noqa: E402
from bridge.cloud.sink_port import open_sink_store  # noqa: E402
from bridge.cloud.sink_writes import BatchWrite  # noqa: E402
from bridge.protocol.codec import Batch  # noqa: E402
from bridge.protocol.model import Reading  # noqa: E402
from tests.postgres import SINK_PASSWORD, PostgresServer  # noqa: E402

T0 = 1_700_000_000_000


def batches(worker: int, count: int, size: int) -> list[Batch]:
    out = []
    for seq in range(1, count + 1):
        ts = T0 + seq * 1000
        readings = [Reading(f"dev-{i % 20}", ("temp", "hum", "co2")[i % 3], ts + i, 20.0 + (seq * i) % 97 / 10, seq)
                    for i in range(size)]
        out.append(Batch(f"gw-{worker}", seq, ts, readings, stream="bench"))
    return out


def write(db: str, worker: int, count: int, size: int, group: int) -> tuple[int, float]:
    """Store ``count`` batches (plus every 10th again) into ``db``, ``group`` per transaction (0: one
    by one with ``store_batch``); (readings stored, seconds)."""
    todo = batches(worker, count, size)
    todo += todo[::10]
    with open_sink_store(db) as store:
        start = time.perf_counter()
        if group == 0:
            stored = sum(len(b.readings) for b in todo if store.store_batch(b, T0))
        else:
            stored = 0
            for i in range(0, len(todo), group):
                part = todo[i:i + group]
                outcomes = store.store_group([BatchWrite(b, T0) for b in part])
                stored += sum(len(b.readings) for b, new in zip(part, outcomes, strict=True) if new is True)
        return stored, time.perf_counter() - start


def run(db: str, workers: int, count: int, size: int, group: int) -> float:
    """Readings/s over all workers: total stored / wall time of the slowest."""
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(write, [db] * workers, range(workers), [count] * workers, [size] * workers,
                                [group] * workers))
    return sum(n for n, _ in results) / max(s for _, s in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=400, help="batches per writer")
    ap.add_argument("--readings", type=int, default=100, help="readings per batch")
    ap.add_argument("--workers", default="1,2,4", help="PostgreSQL writer counts")
    ap.add_argument("--group", type=int, default=0, help="batches per group (default: the sink's limits)")
    args = ap.parse_args()
    limits = GroupLimits()
    group = args.group or max(1, min(limits.max_messages, limits.max_readings // args.readings))
    print(f"{args.batches} batches of {args.readings} readings per writer (+10% duplicates), groups of {group},"
          f" {os.cpu_count()} cores")
    sqlite: dict[int, float] = {}
    for mode in (0, group):
        with tempfile.TemporaryDirectory() as tmp:
            sqlite[mode] = run(str(Path(tmp) / "sink.sqlite"), 1, args.batches, args.readings, mode)
    print(f"  sqlite      1 writer : {sqlite[0]:10,.0f} per message  {sqlite[group]:10,.0f} group"
          f"  ({sqlite[group] / sqlite[0]:.2f}x)  readings/s")
    server = PostgresServer(fsync=True)
    os.environ["PGPASSWORD"] = SINK_PASSWORD
    try:
        server.start()
        for n in (int(w) for w in args.workers.split(",")):
            one, grouped = (run(server.new_database(), n, args.batches, args.readings, mode) for mode in (0, group))
            print(f"  postgresql {n} writer{'s' if n > 1 else ' '}: {one:10,.0f} per message  {grouped:10,.0f} group"
                  f"  ({grouped / one:.2f}x; group {grouped / sqlite[group]:.2f}x sqlite's)  readings/s")
    finally:
        server.stop()

if __name__ == "__main__":
    main()
