"""Bytes written per stored byte by the disk buffer itself, per SQLite setting, in one run.

    python bench/store_writes.py [--dir /var/tmp] [--device loop0]

For each record size (2 KB: a 5 s batch of a small site; 24 KB; 64 KB: a full batch) the buffer
stores records one per transaction (``buffer.sync = "full"``, as during an outage), then they are
acknowledged in groups of 128 as the forwarder does, and the log is checkpointed. Each phase is
measured after a warm-up round, so the write-ahead log and the free pages are in their steady
state. Bytes written are this process' ``write_bytes`` (/proc/self/io, counted per 4 KiB page
dirtied); with ``--device`` (e.g. the loop device a test file system is mounted from), also the
sectors that block device wrote, file-system journal included. Variants, each on a fresh buffer:

  sqlite defaults    4 KiB pages, secure_delete on (Debian's build): what buffers used to get
  no secure_delete   4 KiB pages, deleted batches not overwritten
  buffer default     1 KiB pages, no secure_delete: what a new buffer gets now
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gateway.store.rows as rows_module  # noqa: E402
from bridge.uplink.store import Lane  # noqa: E402
from gateway.store.buffer import Budget, DiskBuffer  # noqa: E402

VARIANTS = {  # name -> (page size of a new database, secure_delete)
    "sqlite defaults": (4096, 1),
    "no secure_delete": (4096, 0),
    "buffer default": (rows_module.PAGE_SIZE, 0),
}
SIZES = ((2000, 400), (24000, 100), (64000, 40))  # record bytes, records per round
ACK_GROUP = 128


def written() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split(":")[1]) for line in f if line.startswith("write_bytes"))


def device_bytes(device: str | None) -> int:
    if not device:
        return 0
    return int(Path(f"/sys/block/{device}/stat").read_text().split()[6]) * 512


def measure(directory: Path, page_size: int, secure_delete: int, size: int, n: int,
            device: str | None) -> dict[str, tuple[float, float]]:
    rows_module.PAGE_SIZE = page_size  # read when a new database is created
    budgets: dict[Lane, Budget] = {"telemetry": Budget(1 << 40), "control": Budget(1 << 30)}
    buf = DiskBuffer(directory, budgets, sync="full", sqlite_pragmas={"secure_delete": secure_delete})
    buf.open()
    payload = random.Random(1).randbytes(size)  # compressed batches look random

    def store() -> None:
        for _ in range(n):
            buf.append("telemetry", "edge/gw/telemetry", lambda seq: payload, 100)

    def ack() -> None:
        keys = [r.key for r in buf.take("telemetry", n)]
        for i in range(0, len(keys), ACK_GROUP):
            buf.ack(*keys[i:i + ACK_GROUP])

    def checkpoint() -> None:
        buf._rows._keys("PRAGMA wal_checkpoint(PASSIVE)", ())

    for _ in range(2):  # warm-up: the log and the free pages reach their steady state
        store()
        ack()
    out: dict[str, tuple[float, float]] = {}
    for phase, step in (("store", store), ("ack", ack), ("checkpoint", checkpoint)):
        os.sync()
        w0, d0 = written(), device_bytes(device)
        step()
        os.sync()
        out[phase] = ((written() - w0) / (n * size), (device_bytes(device) - d0) / (n * size))
    buf.close()
    return out


def cell(figures: tuple[float, float], device: bool) -> str:
    return f"{figures[0]:5.2f}/{figures[1]:5.2f}" if device else f"{figures[0]:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where the buffers go (a real disk)")
    ap.add_argument("--device", help="block device under --dir to read sectors written from (e.g. loop0)")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"bytes written per byte stored ({'process write_bytes / device' if args.device else 'process write_bytes'})")
    print(f"{'variant':18} {'record':>7} {'store':>11} {'ack':>11} {'checkpoint':>11} {'total':>11}")
    for name, (page_size, secure_delete) in VARIANTS.items():
        for size, n in SIZES:
            work = Path(tempfile.mkdtemp(prefix="store-writes-", dir=args.dir))
            try:
                r = measure(work / "buffer", page_size, secure_delete, size, n, args.device)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            total = (sum(v[0] for v in r.values()), sum(v[1] for v in r.values()))
            cells = [r["store"], r["ack"], r["checkpoint"], total]
            print(f"{name:18} {size:>7} " + " ".join(f"{cell(c, bool(args.device)):>11}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
