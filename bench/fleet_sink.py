"""Sink ingest rate with 1, 2, 3 ... workers in one MQTT 5 shared-subscription group, fed by the
fleet load generator through mosquitto, in one run.

    python bench/fleet_sink.py [--workers 1,2,3] [--gateways 200] [--batches 6000] [--batch-readings 50]
                               [--duplicates 0] [--replays 0] [--db-template '{dir}/sink-{worker}.sqlite']
                               [--repeat 3]

For each worker count: a fresh mosquitto, N ``edge-gateway sink --shared bench`` processes (each its
own ``--client-id`` and, with the default template, its own SQLite file; durable commits, as
deployed), subscribed before anything is sent. The generator's messages are made before the clock
starts (the encoding is not measured), then published as fast as the window allows; mosquitto
queues what the sinks have not taken yet. "stored/s" is the readings of the run divided by the time
from the first publish until every message is in a ledger or counted a duplicate. The last column
checks the union of the databases against the manifest (each reading exactly once, checksum).
The ratio compares with the first worker count of the same round; ``--repeat`` runs the rounds
alternately (this box is shared: one run can be slowed by another job) and prints the medians.

Separate SQLite files cannot see each other's keys: a batch sent twice may reach two workers and be
stored twice, so ``--duplicates``/``--replays`` above 0 make that check fail with N > 1 (that is what
a shared store is for). ``--postgres`` runs a PostgreSQL server for the bench (tests/postgres.py, ``fsync=on``,
``synchronous_commit=on``, as deployed) and gives each run a fresh database that all its workers
share (duplicates and replays are then dropped across workers too); a ``--db-template`` that is a
URL is passed to every worker as it is. A shared store is watched with SQL and checked once with
``edge-gateway fleet verify``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._bridge import MosquittoProcess, cloud_conf, free_port  # noqa: E402
from bridge.cloud.fleet import FleetSettings, planned, publish  # noqa: E402
from bridge.cloud.fleet_data import Plan, Send, fleet  # noqa: E402
from bridge.cloud.fleet_manifest import Manifest  # noqa: E402
from bridge.cloud.fleet_verify import verify  # noqa: E402
from tests.postgres import SINK_PASSWORD, PostgresServer  # noqa: E402

GROUP = "bench"
CLI = [sys.executable, "-m", "gateway"]


class Workers:
    """N ``edge-gateway sink`` processes in the shared group, their logs in ``folder``."""

    def __init__(self, n: int, url: str, template: str, folder: Path) -> None:
        self.dbs = [template.format(dir=folder, worker=i) for i in range(1, n + 1)]
        self.logs = [folder / f"sink-{i}.log" for i in range(1, n + 1)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for i, (db, log) in enumerate(zip(self.dbs, self.logs, strict=True), start=1):
            with log.open("wb") as out:
                self.procs.append(subprocess.Popen(
                    [*CLI, "sink", "--url", url, "--db", db, "--shared", GROUP, "--client-id", f"bench-sink-{i}",
                     "--log-level", "info"], stdout=subprocess.DEVNULL, stderr=out))

    def wait_subscribed(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not all("sink subscribed" in log.read_text(errors="replace") for log in self.logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError("a sink did not subscribe: " + " | ".join(x.read_text() for x in self.logs))
            time.sleep(0.05)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(20)

    @property
    def sqlite(self) -> bool:
        return "://" not in self.dbs[0]

    def handled(self) -> int:
        """Messages stored or counted as duplicates, in all the stores together."""
        if self.sqlite:
            return sum(_sqlite_handled(Path(db)) for db in self.dbs)
        return sum(_pg_handled(db) for db in dict.fromkeys(self.dbs))

    def per_worker(self) -> list[int]:
        if not self.sqlite:
            return []
        return [_sqlite_count(Path(db), "SELECT COUNT(*) FROM readings") for db in self.dbs]

    def verify(self, manifest: Manifest, folder: Path) -> str:
        if self.sqlite:
            verdict = verify(manifest, [Path(db) for db in self.dbs])
            return "exactly once" if verdict.ok else "; ".join(verdict.problems)
        path = folder / "manifest.json"
        manifest.write(path)
        args = list(itertools.chain.from_iterable(("--db", db) for db in dict.fromkeys(self.dbs)))
        res = _cli("fleet", "verify", *args, "--manifest", str(path))
        return "exactly once" if res.returncode == 0 else res.stdout.strip().replace("\n", "; ")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, check=False)


def _sqlite_count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as conn:
            return int(conn.execute(sql).fetchone()[0] or 0)
    except sqlite3.OperationalError:  # schema not there yet, or busy: not counted this time
        return 0


def _pg_handled(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT (SELECT COUNT(*) FROM batches) + (SELECT COALESCE(SUM(count), 0) FROM duplicates)"
                           " WHERE to_regclass('batches') IS NOT NULL").fetchone()
    return int(row[0]) if row else 0


def _sqlite_handled(db: Path) -> int:
    return _sqlite_count(db, "SELECT (SELECT COUNT(*) FROM batches) + (SELECT COALESCE(SUM(count), 0) FROM duplicates)")


def make_sends(args: argparse.Namespace) -> tuple[list[Send], Manifest]:
    plan = Plan(fleet(args.gateways, args.devices_per_gateway, seed=args.seed, start_ms=int(time.time() * 1000)),
                random.Random(args.seed), batch_readings=args.batch_readings, duplicates=args.duplicates,
                replays=args.replays)
    sends = list(planned(plan, batches=args.batches))
    return sends, plan.manifest


def run_once(n: int, args: argparse.Namespace, folder: Path, pg: PostgresServer | None) -> dict[str, object]:
    sends, manifest = make_sends(args)
    port = free_port()
    broker = MosquittoProcess(cloud_conf(port), port, folder / "mosquitto")
    broker.wait_listening()
    url = f"mqtt://127.0.0.1:{port}"
    workers = Workers(n, url, pg.new_database() if pg is not None else args.db_template, folder)
    try:
        workers.wait_subscribed()
        start = time.monotonic()
        settings = FleetSettings(url, batches=args.batches, connections=args.connections, window=args.window)
        sent_s, readings_sent = asyncio.run(publish(sends, settings))
        deadline = time.monotonic() + args.timeout
        while workers.handled() < len(sends):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} worker(s): {workers.handled()} of {len(sends)} messages stored in time")
            time.sleep(0.05 if workers.sqlite else 0.5)
        stored_s = time.monotonic() - start
        per_worker = workers.per_worker()
    finally:
        workers.stop()
        broker.stop()
    return {"workers": n, "messages": len(sends), "readings": manifest.readings, "sent_per_s": readings_sent / sent_s,
            "stored_s": stored_s, "stored_per_s": manifest.readings / stored_s, "per_worker": per_worker,
            "check": workers.verify(manifest, folder)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,3", help="worker counts to run, in order")
    ap.add_argument("--gateways", type=int, default=200)
    ap.add_argument("--devices-per-gateway", type=int, default=10)
    ap.add_argument("--batches", type=int, default=6000, help="new batches per run")
    ap.add_argument("--batch-readings", type=int, default=50)
    ap.add_argument("--duplicates", type=float, default=0.0)
    ap.add_argument("--replays", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the sinks to store a run")
    ap.add_argument("--db-template", default="{dir}/sink-{worker}.sqlite",
                    help="each worker's --db; {dir} is the run's temporary folder, {worker} 1..N")
    ap.add_argument("--postgres", action="store_true",
                    help="all workers of a run write one fresh database of a PostgreSQL server started for the bench")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of the worker counts, alternating; the medians are printed at the end")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    print(f"{args.gateways} gateways x {args.devices_per_gateway} devices, {args.batches} batches of "
          f"{args.batch_readings} readings per run, duplicates {args.duplicates}, replays {args.replays}")
    print(f"{'workers':>7} {'sent/s':>9} {'stored/s':>9} {'ratio':>6} {'seconds':>7}  per worker (readings)  check")
    rates: dict[int, list[float]] = {n: [] for n in counts}
    pg = PostgresServer(fsync=True) if args.postgres else None
    if pg is not None:
        pg.start()
        os.environ["PGPASSWORD"] = SINK_PASSWORD  # the workers and the checks find it as libpq does
    try:
        run_rounds(args, counts, rates, pg)
    finally:
        if pg is not None:
            pg.stop()


def run_rounds(args: argparse.Namespace, counts: list[int], rates: dict[int, list[float]],
               pg: PostgresServer | None) -> None:
    for _ in range(args.repeat):
        for n in counts:
            with tempfile.TemporaryDirectory(prefix=f"fleet-sink-{n}-") as tmp:
                r = run_once(n, args, Path(tmp), pg)
            rate = float(r["stored_per_s"])  # type: ignore[arg-type]
            rates[n].append(rate)
            print(f"{n:>7} {r['sent_per_s']:>9.0f} {rate:>9.0f} {rate / rates[counts[0]][-1]:>6.2f} "
                  f"{r['stored_s']:>7.1f}  {r['per_worker']!s:<21}  {r['check']}", flush=True)
    if args.repeat > 1:
        base = statistics.median(rates[counts[0]])
        print("medians: " + ", ".join(f"{n} worker(s) {statistics.median(v):.0f}/s ({statistics.median(v) / base:.2f})"
                                      for n, v in rates.items()))


if __name__ == "__main__":
    main()
