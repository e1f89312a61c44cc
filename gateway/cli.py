"""``edge-gateway``: run the gateway, check a config, run the lab, and the cloud-side tools.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import click
from rich.console import Console

from gateway.config import GatewayConfig, Secrets, load_config
from gateway.errors import ConfigError, GatewayError

err_console = Console(stderr=True, soft_wrap=True)


def setup_logging(level: str) -> None:
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=err_console, show_path=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler()
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt, handlers=[handler], force=True)
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_or_exit(path: Path | None) -> tuple[GatewayConfig, Secrets]:
    if path is None:
        return GatewayConfig(), Secrets()
    try:
        return load_config(path)
    except ConfigError as exc:
        err_console.print(f"[red]invalid configuration[/red] in {exc.source}:", highlight=False)
        for key, reason in exc.problems:
            err_console.print(f"  {key}: {reason}", highlight=False, markup=False)
        raise SystemExit(2) from exc


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` on a new loop; SIGTERM and SIGINT set ``stop``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


CONFIG_OPTION = click.option(
    "-c", "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
    help="TOML config file (see conf/gateway.toml). Without it, embedded defaults are used.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-mqtt-gateway")
def main() -> None:
    """Edge MQTT gateway: filter, batch, buffer on disk and forward device readings to a cloud
    broker, with commands and config coming back down."""


@main.command()
@CONFIG_OPTION
def run(config_path: Path | None) -> None:
    """Run the gateway service until SIGTERM/SIGINT (which flush the open batch to disk)."""
    from gateway.service import GatewayService

    cfg, secrets = load_or_exit(config_path)
    setup_logging(cfg.log.level)
    service = GatewayService(cfg, secrets)
    if cfg.metrics.listen:
        from gateway.metrics import serve

        serve(cfg.metrics.listen, service.snapshot)
    try:
        run_until_signal(service.run)
    except GatewayError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise SystemExit(1) from exc


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="TOML config file to validate.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
def check(config_path: Path, quiet: bool) -> None:
    """Validate a config file and print the effective config (secrets are never printed).

    Exits 2 and names each wrong key when the file is invalid."""
    cfg, _secrets = load_or_exit(config_path)
    if not quiet:
        click.echo(json.dumps(cfg.redacted(), indent=2))
        err_console.print(f"[green]ok[/green]: {config_path}", highlight=False)


@main.command()
@click.option("--url", required=True, help="Cloud broker, e.g. mqtt://127.0.0.1:1883 or mqtts://host.")
@click.option("--db", "db_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="SQLite file to store readings and alerts in (created if missing).")
@click.option("--shared", "shared_group", default=None,
              help="Join an MQTT 5 shared subscription group so several sinks split the load.")
@click.option("--protocol", type=click.Choice(["5", "3.1.1"]), default="5", show_default=True)
@click.option("--prefix", default="edge/{gateway_id}", show_default=True, help="Cloud topic prefix pattern.")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def sink(url: str, db_path: Path, shared_group: str | None, protocol: Literal["5", "3.1.1"], prefix: str,
         log_level: str) -> None:
    """Cloud side: store every gateway's batches and alerts in SQLite, dropping duplicates
    by (gateway, seq) and recording sequence gaps."""
    from bridge.errors import BridgeError
    from bridge.sink import run_sink

    setup_logging(log_level)
    if shared_group and protocol != "5":
        raise click.UsageError("--shared needs --protocol 5")

    async def go(stop: asyncio.Event) -> None:
        await run_sink(url, db_path, protocol=protocol, shared_group=shared_group, prefix=prefix, stop=stop)

    try:
        run_until_signal(go)
    except BridgeError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise SystemExit(1) from exc


@main.command()
@click.option("--db", "db_path", required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="SQLite file written by 'edge-gateway sink'.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def report(db_path: Path, as_json: bool) -> None:
    """Per gateway and device: readings, alerts, duplicate batches dropped, sequence gaps."""
    from bridge.report import build_report, render_report

    data = build_report(db_path)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        render_report(data, Console())


@main.command()
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after S seconds and print the final report (default: until Ctrl-C).")
@click.option("--devices", type=click.IntRange(1, 2000), default=5, show_default=True,
              help="Simulated devices.")
@click.option("--rate-hz", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Messages per second per device.")
@click.option("--local-port", type=click.IntRange(0, 65535), default=1883, show_default=True,
              help="Port of the gateway's local broker (devices connect here; 0 = any free port).")
@click.option("--cloud-port", type=click.IntRange(0, 65535), default=1884, show_default=True,
              help="Port of the stand-in cloud broker (0 = any free port).")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where the buffer and the sink database go (default: a temporary directory).")
@click.option("--anomalies", is_flag=True,
              help="Let the devices inject spikes, stuck values and garbage (NaN, strings) to see them counted.")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
def lab(duration: float | None, devices: int, rate_hz: float, local_port: int, cloud_port: int,
        data_dir: Path | None, anomalies: bool, as_json: bool) -> None:
    """Everything on this machine in one command: local broker, gateway, stand-in cloud broker,
    cloud sink and simulated devices, with a live summary."""
    from gateway.lab import Lab, LabOptions

    setup_logging("warning")
    opts = LabOptions(duration_s=duration, devices=devices, rate_hz=rate_hz, local_port=local_port,
                      cloud_port=cloud_port, data_dir=data_dir, anomalies=anomalies)
    result: dict[str, Any] = {}

    async def go(stop: asyncio.Event) -> None:
        result.update(await Lab(opts).run(stop, live=not as_json))

    try:
        run_until_signal(go)
    except GatewayError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise SystemExit(1) from exc
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif result:
        from gateway.lab import render_result

        render_result(result, Console())
    if not result.get("ok", False):
        raise SystemExit(1)
