"""Buffer at scale: start time, RSS and drain rate of the gateway process with a backlog on disk,
each against the empty-buffer baseline of the same run.

    python bench/buffer_scale.py [--sizes-mb 0,250,1024] [--record-bytes 4000]
    python bench/buffer_scale.py --sizes-mb 0 --readings 10000000 [--readings-per-record 1000]
    python bench/buffer_scale.py --repeat 3 --cache /var/tmp/bscache   # rows interleaved: A/B noise

For each size a backlog of telemetry records of ``--record-bytes`` (about 1 GB = 250,000 records
at the default) is written into a fresh buffer directly (as an earlier run that lost its uplink
would have left it); with ``--readings`` a backlog of that many readings is built instead, as
real batches of ``--readings-per-record`` readings encoded the way the gateway does (zlib). The
backlog is copied into the gateway's data dir and flushed to disk (``--page-cache dirty`` skips
the flush, ``cold`` also evicts the copy from the page cache, as after a reboot), then
``edge-gateway run`` starts as a process with mosquitto as the cloud. Printed per backlog:
seconds until the local broker accepts a device (CONNACK) and /metrics answers, the process' RSS
(/proc VmRSS) once devices are accepted and the backlog is counted, and after it has drained, and
the drain rate.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.protocol.codec import encode_batch  # noqa: E402
from bridge.protocol.model import Reading  # noqa: E402
from bridge.protocol.topics import CloudTopics  # noqa: E402
from gateway.observe.accounting import Accounting  # noqa: E402
from gateway.store.buffer import Budget, DiskBuffer  # noqa: E402
from gateway.store.lanes import LaneWriter  # noqa: E402
from tests.e2e.gateway_process import GatewayProcess, write_config  # noqa: E402
from tests.support import Mosquitto, free_port  # noqa: E402

BYTES_PER_READING = 45  # an uncompressed reading in a batch envelope, roughly
TOPIC = "edge/gw-test/telemetry"


def batch_payload(readings: int) -> bytes:
    """One real, uncompressed batch envelope (each record carries a copy: the gateway forwards
    payloads as they are)."""
    rng = random.Random(7)
    batch = [Reading(f"old-{i % 50:02d}", "temperature", 1_700_000_000_000 + i * 1000, rng.random(), i)
             for i in range(readings)]
    return encode_batch("gw-test", 1, batch, stream="bench", created_ms=1_700_000_000_000, compression="none")


def open_for_building(directory: Path) -> DiskBuffer:
    buf = DiskBuffer(directory, {"telemetry": Budget(1 << 42), "control": Budget(1 << 30)}, sync="normal",
                     write_behind_s=3600)
    buf.open()
    buf.set_link_up(True)  # write-behind: many records per transaction, so building is quick
    return buf


def build_backlog(directory: Path, records: int, record_bytes: int) -> None:
    """``records`` telemetry records straight into the buffer, 1000 per transaction."""
    buf = open_for_building(directory)
    per_record = max(1, record_bytes // BYTES_PER_READING)
    payload = batch_payload(per_record)
    try:
        for i in range(records):
            buf.append("telemetry", TOPIC, lambda seq: payload, per_record)
            if i % 1000 == 999:
                buf.persist_due(force=True)
        buf.set_link_up(False)
    finally:
        buf.close()


def build_readings_backlog(directory: Path, readings: int, per_record: int) -> None:
    """``readings`` readings of 50 devices (4 metrics each, one message a second, slowly varying
    values) as real batches of ``per_record`` readings, encoded and stored as the gateway does."""
    buf = open_for_building(directory)
    lanes = LaneWriter(buf, CloudTopics("gw-test"), Accounting(), compression="zlib", level=6,
                       on_written=lambda: None)
    rng = random.Random(7)
    value = {(d, m): rng.uniform(10, 30) for d in range(50) for m in range(4)}
    metrics = ("temperature", "humidity", "pressure", "battery")
    try:
        for first in range(0, readings, per_record):
            batch = []
            for n in range(first, min(readings, first + per_record)):
                device, metric = (n // 4) % 50, n % 4
                value[device, metric] += rng.gauss(0, 0.05)
                batch.append(Reading(f"dev-{device:02d}", metrics[metric], 1_700_000_000_000 + n // 200 * 1000,
                                     round(value[device, metric], 2), n // 200))
            lanes.write_batch(batch)
            if first // per_record % 1000 == 999:
                buf.persist_due(force=True)
        buf.set_link_up(False)
    finally:
        buf.close()


def place(built: Path, target: Path, page_cache: str) -> None:
    """Copy a built backlog to ``target``, flushed to disk unless ``page_cache`` is ``dirty``, and
    evicted from the page cache if it is ``cold``."""
    shutil.copytree(built, target)
    if page_cache == "dirty":
        return
    os.sync()
    if page_cache == "cold":
        for path in target.rglob("*"):
            if path.is_file():
                with path.open("rb") as f:
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass(frozen=True)
class Backlog:
    """One row: a backlog of ``size_mb`` of ``record_bytes`` records, or of ``readings`` readings."""

    size_mb: int = 0
    record_bytes: int = 4000
    readings: int = 0
    per_record: int = 1000

    @property
    def records(self) -> int:
        if self.readings:
            return -(-self.readings // self.per_record)
        return self.size_mb * 1024 * 1024 // self.record_bytes

    @property
    def expected_readings(self) -> int:
        return self.readings or self.records * max(1, self.record_bytes // BYTES_PER_READING)

    @property
    def label(self) -> str:
        return f"{self.readings / 1e6:g}M rd" if self.readings else f"{self.size_mb} MB"

    def build(self, directory: Path) -> None:
        if self.readings:
            build_readings_backlog(directory, self.readings, self.per_record)
        else:
            build_backlog(directory, self.records, self.record_bytes)

    def cache_name(self) -> str:
        return f"{self.readings}r-{self.per_record}" if self.readings else f"{self.size_mb}mb-{self.record_bytes}"


def run_one(backlog: Backlog, timeout_s: float, cache: Path | None, drain: bool, page_cache: str) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="buffer-scale-"))
    cloud = Mosquitto()
    cloud.start()
    try:
        local, metrics = free_port(), free_port()
        cfg = write_config(tmp, local, metrics, "mqtt://127.0.0.1:1", max_count=1000, max_age_s=0.2,
                           extra=f'[buffer]\ntelemetry = {{ max_bytes = {1 << 42}, max_age_s = 0.0 }}\n')
        t0 = time.perf_counter()
        built = cache / backlog.cache_name() if cache else tmp / "built"
        if not built.exists():
            backlog.build(built.with_suffix(".tmp"))
            built.with_suffix(".tmp").rename(built)
        place(built, tmp / "data" / "buffer", page_cache)
        built_s = time.perf_counter() - t0
        text = cfg.read_text().replace("mqtt://127.0.0.1:1", cloud.url)
        cfg.write_text(text)
        start = time.perf_counter()
        with GatewayProcess(cfg, local, metrics) as gw:
            while not gw._ready():
                time.sleep(0.01)
            accept_s = time.perf_counter() - start
            expected = backlog.expected_readings
            while (gw.metric("edge_readings_restored") or 0) < expected:  # the whole backlog is known
                time.sleep(0.05)
            rss_open = rss_mb(gw.proc.pid)
            drain_start = time.perf_counter()
            deadline = drain_start + (timeout_s if drain else 0)
            while (gw.metric("edge_readings_delivered") or 0) < expected and time.perf_counter() < deadline:
                time.sleep(0.2)
            drain_s = time.perf_counter() - drain_start
            delivered = gw.metric("edge_readings_delivered") or 0
            rss_drained = rss_mb(gw.proc.pid)
            gw.terminate()
        return {"records": backlog.records, "build_s": built_s, "accept_s": accept_s,
                "rss_open_mb": rss_open, "rss_drained_mb": rss_drained,
                "drain_rec_s": delivered / expected * backlog.records / drain_s if backlog.records and drain else 0.0,
                "complete": float(delivered >= expected)}
    finally:
        cloud.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", default="0,250,1024", help="backlog sizes in MB (0 = the baseline)")
    ap.add_argument("--record-bytes", type=int, default=4000)
    ap.add_argument("--readings", default="", help="also backlogs of this many readings (comma-separated)")
    ap.add_argument("--readings-per-record", type=int, default=1000, help="readings per batch for --readings")
    ap.add_argument("--page-cache", choices=("flushed", "dirty", "cold"), default="flushed",
                    help="the copied backlog at start: on disk (default), still being written, or not cached")
    ap.add_argument("--repeat", type=int, default=1, help="run every row this many times, interleaved")
    ap.add_argument("--timeout-s", type=float, default=1800, help="give up on a drain after this long")
    ap.add_argument("--cache", type=Path, help="keep built backlogs here and reuse them (same figures, less waiting)")
    ap.add_argument("--drain-max-mb", type=int, default=1 << 30, help="drain only backlogs up to this size")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes_mb.split(",")]
    if 0 not in sizes:
        sizes.insert(0, 0)
    rows = [Backlog(size_mb=size, record_bytes=args.record_bytes) for size in sizes]
    rows += [Backlog(readings=int(float(n)), per_record=args.readings_per_record)
             for n in args.readings.split(",") if n]
    print(f"{'backlog':>10} {'records':>8} {'accept s':>14} {'RSS open MB':>16} {'RSS drained MB':>16} "
          f"{'drain rec/s':>11} complete", flush=True)
    for _ in range(args.repeat):
        base: dict[str, float] = {}
        for backlog in rows:
            drain = backlog.readings > 0 or backlog.size_mb <= args.drain_max_mb
            r = run_one(backlog, args.timeout_s, args.cache, drain, args.page_cache)
            base = base or r
            print(f"{backlog.label:>10} {int(r['records']):>8} "
                  f"{r['accept_s']:>6.2f} ({r['accept_s'] - base['accept_s']:+5.2f}) "
                  f"{r['rss_open_mb']:>7.1f} ({r['rss_open_mb'] - base['rss_open_mb']:+6.1f}) "
                  f"{r['rss_drained_mb']:>7.1f} ({r['rss_drained_mb'] - base['rss_drained_mb']:+6.1f}) "
                  f"{r['drain_rec_s']:>11.0f} {'yes' if r['complete'] else 'NO'}", flush=True)


if __name__ == "__main__":
    main()
