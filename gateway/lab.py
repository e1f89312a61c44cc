"""``edge-gateway lab``: the whole system on one machine, on embedded defaults.

Starts a stand-in cloud broker (embedded amqtt, MQTT 3.1.1), the cloud sink, the gateway with its
embedded local broker, and the device simulator as a separate process (a real MQTT client, like
any device). The local broker runs with device identities on, as a deployment should: the lab gives
its devices (and :data:`SPARE_DEVICES` more with device-sim's default ids, for a second simulator
started by hand) random passwords, and the simulator logs in with them.

Shows a live summary; with a duration it stops the devices, lets the gateway flush and drain, and
checks that the sink holds exactly what the gateway delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from bridge.cloud.timeline import Sample
from bridge.protocol.topics import DEFAULT_PREFIX
from gateway.config import GatewayConfig, Secrets, parse_config
from gateway.observe.snapshot import to_plain
from gateway.service import GatewayService
from gateway.source.broker import EmbeddedBroker
from gateway.source.passwords import provision

# Rules for the simulator's "room" profile: CO2 random-walks around 600 ppm, so its threshold is
# crossed within seconds and the lab shows alerts and clears; deadbands filter the flat signals.
LAB_RULES: list[dict[str, Any]] = [
    {"name": "room temperature", "metrics": "temperature", "valid": {"min": -40, "max": 85},
     "alert": {"max": 28.0, "min": 15.0, "hysteresis": 0.3}, "deadband": {"abs": 0.05, "max_silence_s": 60}},
    {"name": "humidity", "metrics": "humidity", "valid": {"min": 0, "max": 100},
     "deadband": {"abs": 0.5, "max_silence_s": 120}},
    {"name": "co2", "metrics": "co2", "valid": {"min": 0, "max": 10000},
     "alert": {"max": 605.0, "hysteresis": 5.0}, "deadband": {"abs": 5.0, "max_silence_s": 60}},
]


LAB_PREFIX = "lab-"
SPARE_PREFIX = "dev-"  # device-sim's default id prefix
SPARE_DEVICES = 100


def device_ids(prefix: str, count: int) -> list[str]:
    """The ids device-sim gives ``count`` devices with ``--id-prefix prefix``."""
    return [f"{prefix}{n:04d}" for n in range(1, count + 1)]


@dataclass(frozen=True)
class LabOptions:
    duration_s: float | None = None
    devices: int = 5
    rate_hz: float = 1.0
    local_port: int | None = None  # None: DEFAULT_LOCAL_PORT, or any free port when it is taken
    cloud_port: int | None = None  # None: DEFAULT_CLOUD_PORT, or any free port when it is taken
    data_dir: Path | None = None
    profile: str = "room"
    anomalies: bool = False
    plot: Path | None = None  # write a timeline PNG here (needs the plot extra)


async def sample_every(svc: GatewayService, samples: list[Sample], interval_s: float, stop: asyncio.Event) -> None:
    """On the loop, every ``interval_s`` until ``stop``: the gateway's counters, backlog and link."""
    while True:
        samples.append(sample(svc))
        if stop.is_set():
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


def sample(svc: GatewayService) -> Sample:
    acc = svc.accounting
    return Sample(time.time(), acc.readings_in, acc.delivered, acc.buffered + acc.pending, svc.link.connected)


TEMPORARY_SINK = "the lab's sink (deleted at exit; --data-dir DIR keeps it)"


DEFAULT_LOCAL_PORT = 1883
DEFAULT_CLOUD_PORT = 1884


def pick_port(wanted: int | None, default: int) -> int:
    """``wanted`` when given (0 = any free port); else ``default`` if nothing listens there, else 0.
    (Debian's mosquitto service, for one, takes 1883 as soon as it is installed.)"""
    if wanted is not None:
        return wanted
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers do
        try:
            probe.bind(("127.0.0.1", default))
        except OSError:
            return 0
    return default


def lab_config(data_dir: Path, local_port: int, cloud_url: str) -> GatewayConfig:
    return parse_config({
        "gateway": {"id": "lab-gw", "data_dir": str(data_dir / "gateway")},
        "local_broker": {"listen": f"127.0.0.1:{local_port}",
                         "auth": {"mode": "password", "password_file": str(data_dir / "passwd")}},
        "uplink": {"urls": [cloud_url], "protocol": "3.1.1", "stats_interval_s": 5.0,
                   "backoff_base_s": 0.2, "backoff_cap_s": 5.0},
        "batch": {"max_age_s": 2.0},
        "rules": LAB_RULES,
    }, "<lab defaults>")


class Lab:
    def __init__(self, opts: LabOptions, console: Console | None = None) -> None:
        self.opts = opts
        self.console = console or Console()

    async def run(self, stop: asyncio.Event, *, live: bool = True) -> dict[str, Any]:
        from bridge.cloud.sink import run_sink

        with contextlib.ExitStack() as stack:
            base = self.opts.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-lab-")))
            base.mkdir(parents=True, exist_ok=True)
            db = base / "sink.sqlite"
            credentials = base / "devices.credentials"
            provision(base / "passwd", credentials,
                      device_ids(LAB_PREFIX, self.opts.devices) + device_ids(SPARE_PREFIX, SPARE_DEVICES))
            cloud = EmbeddedBroker("127.0.0.1", pick_port(self.opts.cloud_port, DEFAULT_CLOUD_PORT))
            await cloud.start()
            cloud_url = f"mqtt://127.0.0.1:{cloud.address.port}"
            sink_stop, gw_stop = asyncio.Event(), asyncio.Event()
            sink_task = asyncio.create_task(run_sink(cloud_url, db, protocol="3.1.1", shared_group=None,
                                                     prefix=DEFAULT_PREFIX, stop=sink_stop))
            local_port = pick_port(self.opts.local_port, DEFAULT_LOCAL_PORT)
            svc = GatewayService(lab_config(base, local_port, cloud_url), Secrets())
            gw_task = asyncio.create_task(svc.run(gw_stop))
            devices: asyncio.subprocess.Process | None = None
            samples: list[Sample] = []
            sampler = asyncio.create_task(sample_every(svc, samples, 1.0, gw_stop)) if self.opts.plot else None
            try:
                await self._wait_started(svc, gw_task)
                assert svc.embedded is not None
                local = svc.embedded.address
                devices = await self._start_devices(local.port, credentials)
                if live:
                    self.console.print(
                        f"devices log in with passwords; to add up to {SPARE_DEVICES} more from another terminal:\n"
                        f"  device-sim run --port {local.port} --devices 50 --password-file {credentials}",
                        highlight=False, markup=False, soft_wrap=True)
                started = time.monotonic()
                await self._watch(svc, devices, stop, started, live, local.port, cloud.address.port)
            finally:
                if devices is not None and devices.returncode is None:
                    devices.terminate()
                    await devices.wait()
                gw_stop.set()
                try:
                    await gw_task  # raises when the gateway could not start: stop the rest all the same
                finally:
                    if sampler is not None:
                        await sampler
                    sink_stop.set()
                    await sink_task
                    await cloud.stop()
            return self._finish(svc, db, base, samples)

    def _finish(self, svc: GatewayService, db: Path, base: Path, samples: list[Sample]) -> dict[str, Any]:
        """The final report from the sink database, and the timeline PNG when asked for."""
        from bridge.cloud.report import build_report

        report = build_report(db)
        if self.opts.data_dir is None:  # the temporary directory goes away: name no path in it
            report["db"] = TEMPORARY_SINK
        result = self._result(svc, report, base if self.opts.data_dir else None)
        if self.opts.plot is not None:
            from bridge.cloud.plot import write_png
            from bridge.cloud.timeline import from_samples

            title = f"lab: {self.opts.devices} devices at {self.opts.rate_hz:g} Hz"
            result["plot"] = str(write_png(from_samples(samples, title), self.opts.plot))
        return result

    @staticmethod
    async def _wait_started(svc: GatewayService, task: asyncio.Task[None]) -> None:
        started = asyncio.ensure_future(svc.started.wait())
        await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()

    async def _start_devices(self, port: int, credentials: Path) -> asyncio.subprocess.Process:
        args = [sys.executable, "-m", "device_sim", "run", "--host", "127.0.0.1", "--port", str(port),
                "--devices", str(self.opts.devices), "--rate-hz", str(self.opts.rate_hz),
                "--profile", self.opts.profile, "--seed", "1", "--id-prefix", LAB_PREFIX,
                "--password-file", str(credentials), "--json"]
        if self.opts.duration_s is not None:
            args += ["--duration", str(self.opts.duration_s)]
        if self.opts.anomalies:
            args.append("--anomalies")
        return await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)

    async def _watch(self, svc: GatewayService, devices: asyncio.subprocess.Process, stop: asyncio.Event,
                     started: float, live: bool, local_port: int, cloud_port: int) -> None:
        done = asyncio.ensure_future(devices.wait())
        stopping = asyncio.ensure_future(stop.wait())
        title = f"lab: devices -> :{local_port} gateway -> :{cloud_port} cloud -> sink"
        with Live(self._table(svc, started, title), console=self.console, refresh_per_second=2,
                  transient=False) if live else contextlib.nullcontext() as view:
            while not (done.done() or stopping.done()):
                await asyncio.wait({done, stopping}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                if view is not None:
                    view.update(self._table(svc, started, title))
        stopping.cancel()
        if done.done() and devices.returncode not in (0, None) and devices.stderr is not None:
            err = (await devices.stderr.read()).decode(errors="replace").strip()
            self.console.print(f"[red]device simulator exited with {devices.returncode}[/red]: {err[-500:]}")

    @staticmethod
    def _table(svc: GatewayService, started: float, title: str) -> Table:
        s = svc.typed_snapshot()
        acc = s.accounting
        t = Table(title=title, show_header=False, title_justify="left")
        t.add_column("what")
        t.add_column("value", justify="right")
        rows = [
            ("elapsed", f"{time.monotonic() - started:.0f} s"),
            ("messages in", acc.messages_in),
            ("readings in", acc.readings_in),
            ("filtered (deadband, sampling)", sum(acc.filtered.values())),
            ("dropped (invalid, overflow, ...)", sum(acc.dropped.values())),
            ("alerts", acc.alerts),
            ("batches written / delivered", f"{acc.batches_written} / {acc.batches_delivered}"),
            ("readings delivered", acc.delivered),
            ("bytes up (telemetry / control)", f"{acc.bytes_up_telemetry} / {acc.bytes_up_control}"),
            ("buffer (telemetry records)", s.buffer["telemetry"].records),
            ("uplink", "connected" if s.uplink.connected else "down"),
        ]
        for k, v in rows:
            t.add_row(k, str(v))
        return t

    def _result(self, svc: GatewayService, report: dict[str, Any], kept: Path | None) -> dict[str, Any]:
        acc: dict[str, Any] = to_plain(svc.accounting.snapshot())  # the gateway has stopped: its counters only
        gw = report.get("gateways", {}).get("lab-gw", {})
        sink_readings = int(gw.get("readings", 0))
        ok = svc.accounting.balance() == 0 and sink_readings == acc["delivered"]
        bytes_per_reading = acc["bytes_up_telemetry"] / acc["delivered"] if acc["delivered"] else 0.0
        result = {
            "ok": ok,
            "gateway": acc,
            "sink": {
                "readings": sink_readings,
                "alerts": sum(gw.get("alerts", {}).values()),
                "duplicates_dropped": sum(gw.get("duplicates", {}).values()),
                "missing_seqs": sum(g["missing"] for g in gw.get("gaps", {}).values()),
            },
            "security": to_plain(svc.state.security()),
            "bytes_per_delivered_reading": round(bytes_per_reading, 2),
            "data_dir": str(kept) if kept else None,
            "report": report,
        }
        return result


def render_result(result: dict[str, Any], console: Console) -> None:
    """The lab's final report: what the sink holds, then whether every reading is accounted for."""
    from bridge.cloud.report import render_report

    render_report(result["report"], console)
    acc, sink = result["gateway"], result["sink"]
    filtered, dropped = sum(acc["filtered"].values()), sum(acc["dropped"].values())
    console.print(
        f"readings in {acc['readings_in']} = delivered {acc['delivered']} + filtered {filtered} "
        f"+ dropped {dropped} + buffered {acc['buffered']} + pending {acc['pending']}"
    )
    console.print(
        f"sink stored {sink['readings']} readings, {sink['alerts']} alert changes, "
        f"{sink['duplicates_dropped']} duplicates dropped, {sink['missing_seqs']} missing sequence numbers; "
        f"{result['bytes_per_delivered_reading']} uplink bytes per delivered reading"
    )
    verdict = "[green]OK[/green]: every reading accounted for" if result["ok"] else "[red]MISMATCH[/red]"
    console.print(verdict)
