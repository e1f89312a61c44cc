"""Disk bytes written per uplink byte: steady state, an outage and its drain, in one run.

    python bench/disk_io.py [--devices 50] [--rate-hz 1] [--steady-s 40] [--outage-s 150] [--dir /var/tmp]

The gateway runs as a real process (``python -m gateway run``); its disk writes are read from
``/proc/PID/io`` (``write_bytes``: bytes the process sent to the storage layer, counted when it
dirties a page, so a 100-byte SQLite change costs at least one 4 KiB page). The device simulator
(``room`` profile: temperature, humidity, CO2 in one JSON message per device per second by default)
publishes to the gateway's embedded broker; the cloud is a mosquitto process that the script stops
and starts on the same port. Uplink bytes are the gateway's own counters (``bytes_up_telemetry`` +
``bytes_up_control`` from its metrics endpoint): payload bytes the cloud broker acknowledged, without
MQTT framing.

Modes, one gateway run each (``--modes``): ``full`` (the default: ``buffer.sync = "full"``, every
batch written before it is sent), ``normal`` (``buffer.sync = "normal"``), ``write-behind``
(``sync = "full"`` with ``buffer.write_behind_s = 1``: batches acknowledged within a second never
reach the disk) and ``outage-batches`` (write-behind plus ``batch.outage_max_age_s = 60`` and
``outage_max_count = 10000``: while the cloud is down, batches stay open up to 60 s). The status
file is where the gateway puts it by default (the data directory), or on /dev/shm with
``--status-on-ramdisk`` (as docs/OPERATIONS.md suggests for SD cards). Keep ``--outage-s`` well
above 60 s, or outage batching never closes a batch during the outage and the comparison flatters
it.

Phases of each run:

  steady          cloud up, live traffic
  outage          cloud down for --outage-s: every batch piles up on disk, nothing goes up
  drain           cloud back until the backlog is empty (live traffic continues)
  outage+drain    the two together: what a whole outage costs per byte finally sent

The data directory must be on a real disk (not tmpfs), or write_bytes means nothing; the script
says which filesystem it used and refuses tmpfs. The gateway's log goes to a pipe, not to disk.
Needs the mosquitto binary (Debian package ``mosquitto``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def filesystem_of(path: Path) -> tuple[str, str]:
    """(mount point, filesystem type) of ``path``, from /proc/mounts (longest matching mount)."""
    best = ("/", "unknown")
    resolved = str(path.resolve())
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            mount, fstype = fields[1], fields[2]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[0]):
                best = (mount, fstype)
    return best


def proc_io(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}


def drain_pipe(stream: IO[bytes]) -> None:
    """Read a child's pipe to the end so it never blocks on a full pipe (the text is dropped)."""
    for _ in iter(stream.readline, b""):
        pass


class Cloud:
    """mosquitto on a fixed port, no persistence, started and stopped by the script."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(binary):
            raise SystemExit("mosquitto not found: install the Debian package 'mosquitto'")
        self.binary = binary
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                             "max_queued_messages 0\nlog_dest stderr\nlog_type error\n")
        os.chmod(self.conf, 0o644)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


class Gateway:
    def __init__(self, workdir: Path, cloud_url: str, mode: Mode, max_age_s: float, status_dir: Path) -> None:
        self.local_port, self.metrics_port = free_port(), free_port()
        config = workdir / "gateway.toml"
        config.write_text(f"""
[gateway]
id = "bench-io"
data_dir = "{workdir / 'data'}"
[local_broker]
listen = "127.0.0.1:{self.local_port}"
[uplink]
urls = ["{cloud_url}"]
backoff_base_s = 0.2
backoff_cap_s = 1.0
[batch]
max_age_s = {max_age_s}
outage_max_age_s = {mode.outage_max_age_s}
outage_max_count = {10000 if mode.outage_max_age_s else 0}
[buffer]
sync = "{mode.sync}"
write_behind_s = {mode.write_behind_s}
[metrics]
listen = "127.0.0.1:{self.metrics_port}"
[log]
level = "warning"
[status]
file = "{status_dir / 'status.json'}"
""")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        threading.Thread(target=drain_pipe, args=(self.proc.stderr,), daemon=True).start()
        wait_for(lambda: self.metric("edge_readings_received") is not None, 30, "the gateway did not start")

    def metric(self, name: str) -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith((name + " ", name + "_total ")):
                return float(line.split()[-1])
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {what}")
        time.sleep(0.2)


@dataclass
class Mark:
    t: float
    write_bytes: int
    cancelled: int
    wchar: int
    uplink: int
    delivered: int
    batches: int


def mark(gw: Gateway) -> Mark:
    io = proc_io(gw.proc.pid)
    up = sum(gw.metric(f'edge_uplink_sent_bytes_total{{lane="{lane}"}}') or 0 for lane in ("telemetry", "control"))
    return Mark(time.monotonic(), io["write_bytes"], io["cancelled_write_bytes"], io["wchar"],
                int(up), int(gw.metric("edge_readings_delivered") or 0),
                int(gw.metric('edge_records_written_total{lane="telemetry"}') or 0))


@dataclass
class Row:
    sync: str
    phase: str
    a: Mark
    b: Mark

    def cells(self) -> list[str]:
        disk = self.b.write_bytes - self.a.write_bytes
        up = self.b.uplink - self.a.uplink
        readings = self.b.delivered - self.a.delivered
        ratio = f"{disk / up:.1f}" if up else "-"
        per_reading = f"{disk / readings:.0f}" if readings else "-"
        batches = self.b.batches - self.a.batches
        per_batch = f"{disk / batches:,.0f}" if batches else "-"
        return [self.sync, self.phase, f"{self.b.t - self.a.t:.0f}", f"{disk:,}", f"{up:,}", ratio,
                f"{readings:,}", per_reading, f"{batches}", per_batch, f"{self.b.wchar - self.a.wchar:,}",
                f"{self.b.cancelled - self.a.cancelled:,}"]


HEADER = ["mode", "phase", "seconds", "disk write_bytes", "uplink bytes", "disk/uplink",
          "readings sent", "disk B/reading", "batches stored", "disk B/batch stored", "write() bytes",
          "cancelled"]


@dataclass(frozen=True)
class Mode:
    sync: str  # buffer.sync
    write_behind_s: float = 0.0  # buffer.write_behind_s
    outage_max_age_s: float = 0.0  # batch.outage_max_age_s (outage_max_count 10 x max_count with it)


MODES = {
    "full": Mode("full"),
    "normal": Mode("normal"),
    "write-behind": Mode("full", write_behind_s=1.0),
    "outage-batches": Mode("full", write_behind_s=1.0, outage_max_age_s=60.0),
}


def run_one(args: argparse.Namespace, mode: str, base: Path) -> list[Row]:
    sync = mode
    workdir = Path(tempfile.mkdtemp(prefix=f"disk-io-{sync}-", dir=base))
    os.chmod(workdir, 0o755)
    cloud = Cloud(workdir)
    cloud.start()
    status_dir = Path(tempfile.mkdtemp(prefix="disk-io-status-", dir="/dev/shm")) if args.status_on_ramdisk else workdir
    gw = Gateway(workdir, cloud.url, MODES[mode], args.max_age_s, status_dir)
    devices = subprocess.Popen(
        [sys.executable, "-m", "device_sim", "run", "--port", str(gw.local_port), "--devices", str(args.devices),
         "--rate-hz", str(args.rate_hz), "--profile", "room", "--seed", "1", "--json"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows: list[Row] = []
    try:
        print(f"[{sync}] warming up {args.warmup_s:.0f} s ...", file=sys.stderr)
        time.sleep(args.warmup_s)
        m0 = mark(gw)
        print(f"[{sync}] steady state {args.steady_s:.0f} s ...", file=sys.stderr)
        time.sleep(args.steady_s)
        m1 = mark(gw)
        print(f"[{sync}] cloud down {args.outage_s:.0f} s ...", file=sys.stderr)
        cloud.stop()
        time.sleep(args.outage_s)
        m2 = mark(gw)
        backlog = int(gw.metric("edge_readings_buffered") or 0)
        print(f"[{sync}] cloud up again, draining {backlog:,} readings ...", file=sys.stderr)
        cloud.start()
        wait_for(lambda: gw.metric("edge_readings_buffered") == 0
                 and (gw.metric("edge_readings_delivered") or 0) > m2.delivered,
                 600, "the backlog did not drain")
        m3 = mark(gw)
        rows = [Row(sync, "steady", m0, m1), Row(sync, "outage", m1, m2), Row(sync, "drain", m2, m3),
                Row(sync, "outage+drain", m1, m3)]
    finally:
        devices.send_signal(signal.SIGINT)
        try:
            devices.wait(30)
        except subprocess.TimeoutExpired:
            devices.kill()
        gw.stop()
        cloud.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        if status_dir != workdir:
            shutil.rmtree(status_dir, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--rate-hz", type=float, default=1.0, help="messages per second per device (3 readings each)")
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--steady-s", type=float, default=40.0)
    ap.add_argument("--outage-s", type=float, default=150.0)
    ap.add_argument("--max-age-s", type=float, default=5.0, help="batch.max_age_s (the gateway's default is 5)")
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where the data directories go")
    ap.add_argument("--modes", default="full,write-behind,outage-batches",
                    help="comma-separated: full (buffer.sync full), normal (sync normal), "
                         "write-behind (sync full, buffer.write_behind_s = 1), outage-batches (write-behind "
                         "and batch.outage_max_age_s = 60)")
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    ap.add_argument("--status-on-ramdisk", action="store_true",
                    help="write the status file on /dev/shm instead of the data directory (as docs/OPERATIONS.md "
                         "suggests for SD cards)")
    args = ap.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    mount, fstype = filesystem_of(args.dir)
    if fstype in ("tmpfs", "ramfs"):
        raise SystemExit(f"{args.dir} is on {fstype}: write_bytes would not count disk writes; use --dir on a disk")
    print(f"data dir under {args.dir} (filesystem {fstype} mounted on {mount}); {args.devices} devices x "
          f"{args.rate_hz} Hz, profile room (3 readings per message), batch.max_age_s {args.max_age_s}")
    rows: list[Row] = []
    for mode in args.modes.split(","):
        rows += run_one(args, mode, args.dir)

    table = [HEADER] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    for i, line in enumerate(table):
        print("  ".join(cell.rjust(widths[j]) if j >= 2 else cell.ljust(widths[j]) for j, cell in enumerate(line)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("disk write_bytes is /proc/PID/io of the gateway process; uplink bytes are acknowledged payload "
          "bytes (telemetry + control), without MQTT framing. A commit that must survive a power cut costs at "
          "least one 4 KiB page, so while every batch is written disk/uplink cannot go below "
          "4096 / (uplink bytes per batch).")


if __name__ == "__main__":
    main()
