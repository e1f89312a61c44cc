"""``edge-gateway``: run the gateway, check a config, run the lab, push a config; the group also
carries the device commands (:mod:`gateway.devices_cli`) and the cloud-side tools ``sink``,
``report`` and ``command`` (:mod:`bridge.cloud.cli`) and ``fleet`` (:mod:`bridge.cloud.fleet_cli`).

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import asyncio
import gc
import getpass
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Literal

import click

from bridge.cloud.cli_common import (
    PREFIX_HELP,
    ask_gateway,
    exit_failed,
    login_options,
    operator_topics,
    require_plot,
    run_until_signal,
    setup_logging,
    show_answer,
)
from bridge.mqtt.types import Login
from bridge.protocol.records import ConfigStatus, ControlRecord
from bridge.protocol.topics import DEFAULT_PREFIX
from gateway.cli_common import CONFIG_OPTION, err_console, exit_invalid, load_or_exit
from gateway.config import MAX_CONFIG_VERSION, GatewayConfig, parse_config, read_toml
from gateway.errors import AddressInUse, ConfigError, CredentialsError, GatewayError, StorageError

# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms). paho's
# network thread needs it for every uplink message in or out; with the event loop busy each of
# those waited up to the full interval (see docs/DEVELOPMENT.md, "Control under load").
GIL_SWITCH_S = 0.001


class LazyGroup(click.Group):
    """A command group whose ``lazy`` commands (name -> "module:attribute") are imported only when
    used or listed: ``run`` does not load the device and cloud-side tools (memory and start time)."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self._lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._lazy:
            module, attribute = self._lazy[cmd_name].split(":")
            loaded = getattr(importlib.import_module(module), attribute)
            assert isinstance(loaded, click.Command)
            return loaded
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             lazy={"devices": "gateway.devices_cli:devices", "sink": "bridge.cloud.cli:sink",
                   "report": "bridge.cloud.cli:report", "command": "bridge.cloud.cli:command",
                   "fleet": "bridge.cloud.fleet_cli:fleet"})
@click.version_option(package_name="edge-mqtt-gateway")
def main() -> None:
    """Edge MQTT gateway: filter, batch, buffer on disk and forward device readings to a cloud
    broker, with commands and config coming back down."""


# the files group: each command imported when used; ``push`` is a cloud-side tool
FILES_COMMANDS = {"send": "gateway.files_cli:send", "list": "gateway.files_cli:list_transfers",
                  "push": "bridge.cloud.files_cli:push"}


@main.group(cls=LazyGroup, lazy=FILES_COMMANDS)
def files() -> None:
    """Send files to the cloud, list transfers, push files down to a gateway (docs/OPERATIONS.md,
    "File transfer")."""


@main.command()
@CONFIG_OPTION
def run(config_path: Path | None) -> None:
    """Run the gateway service until SIGTERM/SIGINT (which flush the open batch to disk)."""
    from gateway.service import GatewayService

    cfg, secrets = load_or_exit(config_path)
    setup_logging(cfg.log.level)
    try:
        service = GatewayService(cfg, secrets)
    except CredentialsError as exc:
        err_console.print(f"[red]invalid credentials:[/red] {exc}", highlight=False, markup=False)
        raise SystemExit(2) from exc
    for warning in insecure_settings(cfg):
        logging.getLogger("gateway.security").warning("SECURITY: %s", warning)
    try:
        if cfg.metrics.listen:
            from gateway.observe.metrics import serve

            serve(cfg.metrics, secrets.metrics_password, service.board)
        settle_process()
        run_until_signal(service.run, on_hup=service.reload_credentials)
    except GatewayError as exc:
        exit_failed(exc, run_fix(exc, cfg, config_path))


def settle_process() -> None:
    """Right before the loop starts. What is built by now lives as long as the process: the garbage
    collector's full passes skip it from now on (scanning it paused the loop ~50 ms each time, the
    first right as devices connect). And threads get the GIL sooner (:data:`GIL_SWITCH_S`)."""
    gc.freeze()
    sys.setswitchinterval(GIL_SWITCH_S)


def run_fix(exc: GatewayError, cfg: GatewayConfig, config_path: Path | None) -> str:
    """What to do about an error that stopped ``run``."""
    where = f" in {config_path}" if config_path is not None else " (-c CONFIG)"
    if isinstance(exc, AddressInUse):
        return f"stop that process, or set {exc.setting}{where} to a free address"
    if isinstance(exc, StorageError):
        key, path = ("buffer.dir", cfg.buffer.dir) if cfg.buffer.dir is not None else (
            "gateway.data_dir", cfg.gateway.data_dir)
        return (f"{key} ({path.resolve()}) must be a directory the user {getpass.getuser()} can write: "
                f"fix its owner or set {key}{where}")
    return ""


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="TOML config file to validate.")
@click.option("--print", "print_config", is_flag=True,
              help="Print the full effective config as JSON (secrets are never printed).")
@click.option("--quiet", is_flag=True, help="Print nothing on success (warnings still go to stderr).")
def check(config_path: Path, print_config: bool, quiet: bool) -> None:
    """Validate a config file and print a short summary of it.

    Exits 2 and names each wrong key when the file is invalid (a secret reference to an unset
    environment variable or a missing file included)."""
    cfg, _secrets = load_or_exit(config_path)
    if print_config:
        click.echo(json.dumps(cfg.redacted(), indent=2))
    elif not quiet:
        click.echo("\n".join(config_summary(cfg)))
    for warning in insecure_settings(cfg):
        err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, markup=False)
    if not quiet:
        err_console.print(f"[green]ok[/green]: {config_path}", highlight=False)


def config_summary(cfg: GatewayConfig) -> list[str]:
    """A few lines an operator reads at a glance: what listens, where data goes, what it keeps."""
    lb, up, buf = cfg.local_broker, cfg.uplink, cfg.buffer
    listening = ([f"{lb.listen} (plain)"] if lb.plain else []) + ([f"{lb.tls.listen} (TLS)"] if lb.tls else [])
    local = (f"embedded, listening on {', '.join(listening)}, auth {lb.auth.mode}" if lb.mode == "embedded"
             else f"external {lb.url}")
    mib = 1024 * 1024
    data = cfg.gateway.data_dir
    return [
        f"gateway      {cfg.gateway.id}",
        f"data dir     {data}" if data.is_absolute() else
        f"data dir     {data.resolve()} (relative: from the working directory)",
        f"local broker {local}",
        f"uplink       {', '.join(up.urls)} (MQTT {up.protocol}"
        f"{', user ' + up.username if up.username else ''}{', TLS' if up.tls else ''})",
        f"buffer       telemetry {buf.telemetry.max_bytes // mib} MiB, "
        f"control {buf.control.max_bytes // mib} MiB",
        f"rules        {len(cfg.rules)}; batch {cfg.batch.max_count} readings / {cfg.batch.max_age_s:g} s",
        f"metrics      {cfg.metrics.listen or 'off'}",
    ]


def insecure_settings(cfg: GatewayConfig) -> list[str]:
    """Valid but risky combinations, each with what to do about it."""
    from gateway.config import is_loopback, split_host_port

    out = []
    lb, m = cfg.local_broker, cfg.metrics
    exposed = [lst for lst in lb.listeners if not is_loopback(split_host_port(lst)[0])]
    if lb.mode == "embedded" and lb.auth.mode == "none" and exposed:
        out.append(f"local_broker.auth.allow_anonymous_lan = true: any client that reaches {', '.join(exposed)} may "
                   "act as any device, read all data and command every device")
    if lb.mode == "embedded" and lb.auth.passwords and lb.plain and not is_loopback(split_host_port(lb.listen)[0]):
        out.append(f"device passwords cross the network in clear text on the plain listener {lb.listen}: add "
                   "[local_broker.tls] and set local_broker.plain = false")
    if lb.tls is not None and lb.auth.certificates and not lb.tls.require_client_cert and lb.auth.mode != "either":
        out.append("local_broker.tls.require_client_cert = false: clients without a certificate complete the TLS "
                   "handshake and are only refused at CONNECT")
    if m.listen and not is_loopback(split_host_port(m.listen)[0]):
        if m.tls_cert_file is None:
            out.append(f"metrics.listen = {m.listen} is reachable from the network without TLS "
                       "(metrics.tls_cert_file / tls_key_file)")
        if m.basic_auth_username is None:
            out.append(f"metrics.listen = {m.listen} answers anyone: set metrics.basic_auth_username / "
                       "basic_auth_password")
    return out


@main.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
def status(config_path: Path | None, as_json: bool) -> None:
    """Show a running gateway's state from its status file: lanes, backlog, link, drain ETA,
    connected devices, config version and the last rejected messages.

    Exits 0 when the gateway is running, 1 when the file is missing, stale or says it stopped."""
    from gateway.observe.status import StatusUnavailable, read_status, render_status

    try:  # secrets are not needed to find the file: a shell without them may ask for the status
        cfg = GatewayConfig() if config_path is None else parse_config(read_toml(config_path), str(config_path))
    except ConfigError as exc:
        exit_invalid(exc)
    try:
        doc = read_status(cfg.status_file)
    except StatusUnavailable as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise SystemExit(1) from exc
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        from rich.console import Console

        render_status(doc, Console(highlight=False))
    if doc["stale"]:
        what = "it stopped" if doc.get("state") == "stopped" else "the gateway is not running or is stuck"
        err_console.print(f"[yellow]the status is {doc['age_s']} s old: {what}[/yellow]", highlight=False)
        raise SystemExit(1)


@main.command()
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after S seconds and print the final report (default: until Ctrl-C).")
@click.option("--devices", type=click.IntRange(1, 2000), default=5, show_default=True,
              help="Simulated devices.")
@click.option("--rate-hz", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Messages per second per device.")
@click.option("--local-port", type=click.IntRange(0, 65535), default=None,
              help="Port of the gateway's local broker (devices connect here; 0 = any free port). "
                   "Default: 1883, or any free port when 1883 is taken.")
@click.option("--cloud-port", type=click.IntRange(0, 65535), default=None,
              help="Port of the stand-in cloud broker (0 = any free port). Default: 1884, or any free port "
                   "when 1884 is taken.")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where the buffer and the sink database go (default: a temporary directory).")
@click.option("--anomalies", is_flag=True,
              help="Let the devices inject spikes, stuck values and garbage (NaN, strings) to see them counted.")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="At the end, write a timeline PNG (readings in, delivered, backlog, link down shaded; "
                   "sampled once a second); needs the 'plot' extra.")
def lab(duration: float | None, devices: int, rate_hz: float, local_port: int | None, cloud_port: int | None,
        data_dir: Path | None, anomalies: bool, as_json: bool, plot_path: Path | None) -> None:
    """Everything on this machine in one command: local broker, gateway, stand-in cloud broker,
    cloud sink and simulated devices, with a live summary."""
    from gateway.lab import Lab, LabOptions

    if plot_path is not None:
        require_plot()
    setup_logging("warning")
    opts = LabOptions(duration_s=duration, devices=devices, rate_hz=rate_hz, local_port=local_port,
                      cloud_port=cloud_port, data_dir=data_dir, anomalies=anomalies, plot=plot_path)
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
        from rich.console import Console

        from gateway.lab import render_result

        render_result(result, Console())
    if not result.get("ok", False):
        raise SystemExit(1)


@main.command("push-config")
@click.option("--url", required=True, help="Cloud broker, e.g. mqtt://127.0.0.1:1883 or mqtts://host.")
@click.option("--gateway", "gateway_id", required=True, help="Id of the gateway to configure.")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--version", "version", type=click.IntRange(1, MAX_CONFIG_VERSION), default=None,
              help="Version to push (overrides 'version' in the file); must be above the gateway's.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Seconds to wait for the gateway's answer.")
@click.option("--no-retain", is_flag=True,
              help="Do not retain the document on the broker (by default a gateway that is offline gets it "
                   "when it connects).")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help=PREFIX_HELP)
@click.option("--protocol", type=click.Choice(["5", "3.1.1"]), default="5", show_default=True,
              help="MQTT version to speak to the cloud broker.")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's answer as JSON.")
@login_options
def push_config(url: str, gateway_id: str, file: Path, version: int | None, timeout_s: float, no_retain: bool,
                prefix: str, protocol: Literal["5", "3.1.1"], as_json: bool, login: Login) -> None:
    """Push a config document (rules, batch policy) from a TOML FILE to a gateway and print its answer.

    Exits 0 when the gateway applied it, 1 when it rejected it, found it stale or did not answer in
    time, 2 for bad arguments or an invalid file (each wrong key is named)."""
    from gateway.control.config_push import document_bytes, read_document

    topics = operator_topics(url, gateway_id, prefix)
    try:
        doc = read_document(file, version)
    except ConfigError as exc:
        exit_invalid(exc)

    def answers_this(record: ControlRecord) -> bool:
        return isinstance(record, ConfigStatus) and record.version == doc.version

    status = ask_gateway(
        url, topics.config, document_bytes(doc), topics.config_status, answers_this, timeout_s, retain=not no_retain,
        protocol=protocol, login=login,
        no_answer=f"from gateway {gateway_id}" + ("" if no_retain else " (the document is retained: the gateway "
                                                  "applies it when it connects)"))
    show_answer(status, as_json, lambda: render_config_status(status, gateway_id), ok="applied")


def render_config_status(status: dict[str, Any], gateway_id: str) -> None:
    from rich.console import Console

    colour = {"applied": "green", "stale": "yellow"}.get(str(status.get("status")), "red")
    out = Console(soft_wrap=True, highlight=False)
    out.print(f"[{colour}]{status.get('status')}[/{colour}]: version {status.get('version')} "
              f"(gateway {gateway_id} is at version {status.get('current_version')})")
    for err in status.get("errors") or []:
        out.print(f"  {err.get('key')}: {err.get('reason')}", markup=False)

