"""Buffer at scale: start time, RSS and drain rate of the gateway process with a backlog on disk,
each against the empty-buffer baseline of the same run.

    python bench/buffer_scale.py [--sizes-mb 0,250,1024] [--record-bytes 4000]

For each size a backlog of telemetry records of ``--record-bytes`` (about 1 GB = 250,000 records
at the default) is written into a fresh buffer directly (as an earlier run that lost its uplink
would have left it), then ``edge-gateway run`` starts as a process with mosquitto as the cloud.
Printed per size: seconds until the local broker accepts a device (CONNACK), the process' RSS
(/proc VmRSS) once devices are accepted and after the backlog has drained, and the drain rate.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.protocol.codec import encode_batch  # noqa: E402
from bridge.protocol.model import Reading  # noqa: E402
from gateway.store.buffer import Budget, DiskBuffer  # noqa: E402
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


def build_backlog(directory: Path, records: int, record_bytes: int) -> None:
    """``records`` telemetry records straight into the buffer, 1000 per transaction."""
    buf = DiskBuffer(directory, {"telemetry": Budget(1 << 42), "control": Budget(1 << 30)}, sync="normal",
                     write_behind_s=3600)
    buf.open()
    buf.set_link_up(True)  # write-behind: many records per transaction, so building is quick
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


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(size_mb: int, record_bytes: int, timeout_s: float, cache: Path | None, drain: bool) -> dict[str, float]:
    records = size_mb * 1024 * 1024 // record_bytes
    tmp = Path(tempfile.mkdtemp(prefix="buffer-scale-"))
    cloud = Mosquitto()
    cloud.start()
    try:
        local, metrics = free_port(), free_port()
        cfg = write_config(tmp, local, metrics, "mqtt://127.0.0.1:1", max_count=1000, max_age_s=0.2,
                           extra=f'[buffer]\ntelemetry = {{ max_bytes = {1 << 42}, max_age_s = 0.0 }}\n')
        t0 = time.perf_counter()
        built = cache / f"{size_mb}mb-{record_bytes}" if cache else tmp / "built"
        if not built.exists():
            build_backlog(built, records, record_bytes)
        shutil.copytree(built, tmp / "data" / "buffer")
        built_s = time.perf_counter() - t0
        text = cfg.read_text().replace("mqtt://127.0.0.1:1", cloud.url)
        cfg.write_text(text)
        start = time.perf_counter()
        with GatewayProcess(cfg, local, metrics) as gw:
            while not gw._ready():
                time.sleep(0.01)
            accept_s = time.perf_counter() - start
            per_record = max(1, record_bytes // BYTES_PER_READING)
            expected = records * per_record
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
        return {"size_mb": size_mb, "records": records, "build_s": built_s, "accept_s": accept_s,
                "rss_open_mb": rss_open, "rss_drained_mb": rss_drained,
                "drain_rec_s": delivered / per_record / drain_s if records and drain else 0.0,
                "complete": float(delivered >= expected)}
    finally:
        cloud.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", default="0,250,1024", help="backlog sizes in MB (0 = the baseline)")
    ap.add_argument("--record-bytes", type=int, default=4000)
    ap.add_argument("--timeout-s", type=float, default=1800, help="give up on a drain after this long")
    ap.add_argument("--cache", type=Path, help="keep built backlogs here and reuse them (same figures, less waiting)")
    ap.add_argument("--drain-max-mb", type=int, default=1 << 30, help="drain only backlogs up to this size")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes_mb.split(",")]
    if 0 not in sizes:
        sizes.insert(0, 0)
    print(f"{'backlog':>9} {'records':>8} {'accept s':>14} {'RSS open MB':>16} {'RSS drained MB':>16} "
          f"{'drain rec/s':>11} complete", flush=True)
    base: dict[str, float] = {}
    for size in sizes:
        r = run_one(size, args.record_bytes, args.timeout_s, args.cache, size <= args.drain_max_mb)
        base = base or r
        print(f"{r['size_mb']:>6} MB {int(r['records']):>8} "
              f"{r['accept_s']:>6.2f} ({r['accept_s'] - base['accept_s']:+5.2f}) "
              f"{r['rss_open_mb']:>7.1f} ({r['rss_open_mb'] - base['rss_open_mb']:+6.1f}) "
              f"{r['rss_drained_mb']:>7.1f} ({r['rss_drained_mb'] - base['rss_drained_mb']:+6.1f}) "
              f"{r['drain_rec_s']:>11.0f} {'yes' if r['complete'] else 'NO'}", flush=True)


if __name__ == "__main__":
    main()
