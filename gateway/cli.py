"""``edge-gateway``: run the gateway, check a config, run the lab, and the cloud-side tools.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import click
from rich.console import Console

from bridge.mqtt.errors import BridgeError, InvalidUrl
from bridge.mqtt.types import ANONYMOUS, Login
from bridge.mqtt.urls import parse_broker_url
from bridge.protocol.topics import ID_RULE, CloudTopics, valid_id
from gateway.cli_common import CONFIG_OPTION, err_console, exit_failed, exit_invalid, load_or_exit, login_options
from gateway.config import MAX_CONFIG_VERSION, GatewayConfig, parse_config, read_toml
from gateway.devices_cli import devices
from gateway.errors import AddressInUse, ConfigError, CredentialsError, GatewayError, StorageError


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


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]], on_hup: asyncio.Event | None = None) -> None:
    """Run ``main(stop)`` on a new loop; SIGTERM and SIGINT set ``stop``, SIGHUP sets ``on_hup``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if on_hup is not None:
            loop.add_signal_handler(signal.SIGHUP, on_hup.set)
        await main(stop)

    asyncio.run(runner())


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
        run_until_signal(service.run, on_hup=service.reload_credentials)
    except GatewayError as exc:
        exit_failed(exc, run_fix(exc, cfg, config_path))


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
        render_status(doc, Console(highlight=False))
    if doc["stale"]:
        what = "it stopped" if doc.get("state") == "stopped" else "the gateway is not running or is stuck"
        err_console.print(f"[yellow]the status is {doc['age_s']} s old: {what}[/yellow]", highlight=False)
        raise SystemExit(1)


@main.command()
@click.option("--url", required=True, help="Cloud broker, e.g. mqtt://127.0.0.1:1883 or mqtts://host.")
@click.option("--db", "db_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="SQLite file to store readings and alerts in (created if missing).")
@click.option("--shared", "shared_group", default=None,
              help="Join an MQTT 5 shared subscription group so several sinks split the load.")
@click.option("--protocol", type=click.Choice(["5", "3.1.1"]), default="5", show_default=True)
@click.option("--client-id", default=None,
              help="MQTT client id (default: derived from the database path). Give each sink of a --shared "
                   "group its own stable one.")
@click.option("--prefix", default="edge/{gateway_id}", show_default=True, help="Cloud topic prefix pattern.")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--start-timeout", "start_timeout_s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Exit 1 when no broker accepts the first connection within S seconds (0 = keep trying). "
                   "Later reconnects always keep trying.")
@login_options
def sink(url: str, db_path: Path, shared_group: str | None, protocol: Literal["5", "3.1.1"], client_id: str | None,
         prefix: str, log_level: str, start_timeout_s: float, login: Login) -> None:
    """Cloud side: store every gateway's batches and alerts in SQLite, dropping duplicates
    by (gateway, stream, lane, seq) and recording sequence gaps."""
    from bridge.cloud.sink import run_sink
    from bridge.mqtt.errors import BridgeError

    setup_logging(log_level)
    if shared_group and protocol != "5":
        raise click.UsageError("--shared needs --protocol 5")

    async def go(stop: asyncio.Event) -> None:
        await run_sink(url, db_path, protocol=protocol, shared_group=shared_group, prefix=prefix, stop=stop,
                       client_id=client_id, start_timeout_s=start_timeout_s or None, login=login)

    try:
        run_until_signal(go)
    except BridgeError as exc:
        exit_failed(exc)


@main.command()
@click.option("--db", "db_path", required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="SQLite file written by 'edge-gateway sink'.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--device", default=None, help="Only this device (and the gateways its data came through).")
@click.option("--fail-on-gaps", is_flag=True, help="Exit 1 when any reported gateway misses seqs (for scripts).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write a timeline PNG (readings per minute, replayed batches); needs the 'plot' extra.")
def report(db_path: Path, as_json: bool, device: str | None, fail_on_gaps: bool, plot_path: Path | None) -> None:
    """Per gateway and device: readings, alerts, duplicate batches dropped, sequence gaps.

    Exits 0, or 1 with --fail-on-gaps when seqs are missing."""
    from bridge.cloud.report import build_report, has_gaps, render_report

    if plot_path is not None:
        require_plot()
    data = build_report(db_path, device)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        render_report(data, Console())
    if plot_path is not None:
        from bridge.cloud.plot import write_png
        from bridge.cloud.timeline import from_sink

        write_png(from_sink(db_path, device), plot_path)
        err_console.print(f"timeline written to {plot_path}", highlight=False, markup=False)
    if fail_on_gaps and has_gaps(data):
        missing = data["totals"]["missing"]
        err_console.print(f"[red]gaps:[/red] {missing['telemetry']} telemetry and {missing['control']} control "
                          "records missing", highlight=False)
        raise SystemExit(1)


def require_plot() -> None:
    """Exit 2 with the install hint when --plot is asked for without the plot extra."""
    from rich.markup import escape

    from bridge.cloud.errors import PlotUnavailable
    from bridge.cloud.plot import require_matplotlib

    try:
        require_matplotlib()
    except PlotUnavailable as exc:
        err_console.print(f"[red]error:[/red] --plot: {escape(str(exc))}", highlight=False)
        raise SystemExit(2) from exc


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
@click.option("--prefix", default="edge/{gateway_id}", show_default=True, help="Cloud topic prefix pattern.")
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

    def answers_this(record: dict[str, Any]) -> bool:
        return record.get("kind") == "config_status" and record.get("version") == doc.version

    status = ask_gateway(
        url, topics.config, document_bytes(doc), topics.config_status, answers_this, timeout_s, retain=not no_retain,
        protocol=protocol, login=login,
        no_answer=f"from gateway {gateway_id}" + ("" if no_retain else " (the document is retained: the gateway "
                                                  "applies it when it connects)"))
    show_answer(status, as_json, lambda: render_config_status(status, gateway_id), ok="applied")


@main.command("command")
@click.option("--url", required=True, help="Cloud broker, e.g. mqtt://127.0.0.1:1883 or mqtts://host.")
@click.option("--gateway", "gateway_id", required=True, help="Id of the gateway the device is behind.")
@click.argument("device")
@click.argument("name")
@click.option("--args", "args_json", default=None, help='Arguments as a JSON object, e.g. \'{"rate_hz": 5}\'.')
@click.option("--ttl", "ttl_s", type=click.FloatRange(min=0), default=None,
              help="Seconds the command stays valid; after that it is answered 'expired' instead of run.")
@click.option("--id", "command_id", default=None, help="Command id (1-64 characters); default: a random one.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Seconds to wait for the answer.")
@click.option("--prefix", default="edge/{gateway_id}", show_default=True, help="Cloud topic prefix pattern.")
@click.option("--protocol", type=click.Choice(["5", "3.1.1"]), default="5", show_default=True,
              help="MQTT version to speak to the cloud broker.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@login_options
def command(url: str, gateway_id: str, device: str, name: str, args_json: str | None, ttl_s: float | None,
            command_id: str | None, timeout_s: float, prefix: str, protocol: Literal["5", "3.1.1"],
            as_json: bool, login: Login) -> None:
    """Send command NAME to DEVICE through a gateway and print the answer.

    Exits 0 when the answer's status is ok, 1 for any other status (error, unknown_command,
    expired, undeliverable, rejected) or when no answer came in time, 2 for bad arguments."""
    topics = operator_topics(url, gateway_id, prefix)
    payload = command_payload(device, name, args_json, ttl_s, command_id)
    cid = payload["id"]

    def answers_this(record: dict[str, Any]) -> bool:
        return record.get("kind") == "response" and record.get("id") == cid and record.get("device") == device

    answer = ask_gateway(url, f"{topics.prefix}/commands/{device}/{name}", json.dumps(payload).encode(),
                         topics.responses, answers_this, timeout_s, no_answer=f"to command {cid}", protocol=protocol,
                         login=login)
    show_answer(answer, as_json, lambda: render_response(answer), ok="ok")


def command_payload(device: str, name: str, args_json: str | None, ttl_s: float | None,
                    command_id: str | None) -> dict[str, Any]:
    """Check the command's arguments locally (exit 2 naming the bad one) and build its payload."""
    for value, hint in ((device, "DEVICE"), (name, "NAME")):
        if not valid_id(value):
            raise click.BadParameter(f"{value[:64]!r} must be {ID_RULE} (it becomes a topic level)",
                                     param_hint=hint)
    args: Any = {}
    if args_json is not None:
        try:
            args = json.loads(args_json)
        except ValueError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--args") from exc
        if not isinstance(args, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--args")
    cid = command_id if command_id is not None else f"cli-{uuid.uuid4().hex[:12]}"
    if not 0 < len(cid) <= 64:
        raise click.BadParameter("must be 1 to 64 characters", param_hint="--id")
    payload: dict[str, Any] = {"id": cid, "args": args}
    if ttl_s is not None:
        payload["ttl_s"] = ttl_s
    return payload


def render_response(answer: dict[str, Any]) -> None:
    status = str(answer.get("status"))
    colour = "green" if status == "ok" else "red"
    rtt = answer.get("rtt_ms")
    out = Console(soft_wrap=True, highlight=False)
    took = f" (round trip {rtt:.1f} ms)" if isinstance(rtt, (int, float)) else ""
    out.print(f"[{colour}]{status}[/{colour}] from {answer.get('source')}: {answer.get('device')} "
              f"{answer.get('command')} id={answer.get('id')}{took}")
    if answer.get("result") is not None:
        out.print(f"  result: {json.dumps(answer['result'])}", markup=False)


def ask_gateway(url: str, topic: str, payload: bytes, reply_topic: str, match: Callable[[dict[str, Any]], bool],
                timeout_s: float, *, no_answer: str, retain: bool = False,
                protocol: Literal["5", "3.1.1"] = "5", login: Login = ANONYMOUS) -> dict[str, Any]:
    """One operator request through the cloud broker; exits 1 when there is no answer in time or the
    broker cannot be used."""
    from bridge.cloud.operator import NoReply, request

    try:
        return asyncio.run(request(url, topic, payload, reply_topic, match, timeout_s, retain=retain,
                                   protocol=protocol, login=login))
    except NoReply as exc:
        err_console.print(f"[red]no answer[/red] {no_answer}: {exc}", highlight=False)
        raise SystemExit(1) from exc
    except BridgeError as exc:
        exit_failed(exc, "check --url and that the broker is running and accepts this client")


def show_answer(answer: dict[str, Any], as_json: bool, render: Callable[[], None], *, ok: str) -> None:
    """Print the gateway's answer (raw JSON or rendered); exit 1 unless its status is ``ok``."""
    if as_json:
        click.echo(json.dumps(answer))
    else:
        render()
    if answer.get("status") != ok:
        raise SystemExit(1)


def operator_topics(url: str, gateway_id: str, prefix: str) -> CloudTopics:
    """Validate the operator commands' common arguments (exit 2 naming the bad one)."""
    try:
        parse_broker_url(url)
    except InvalidUrl as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from exc
    if not valid_id(gateway_id):
        raise click.BadParameter(f"{gateway_id[:64]!r} is not a gateway id ({ID_RULE})",
                                 param_hint="--gateway")
    try:
        topics = CloudTopics(gateway_id, prefix)
        _ = topics.prefix
    except (ValueError, KeyError) as exc:
        raise click.BadParameter(f"{prefix!r}: {exc}", param_hint="--prefix") from exc
    return topics


def render_config_status(status: dict[str, Any], gateway_id: str) -> None:
    colour = {"applied": "green", "stale": "yellow"}.get(str(status.get("status")), "red")
    out = Console(soft_wrap=True, highlight=False)
    out.print(f"[{colour}]{status.get('status')}[/{colour}]: version {status.get('version')} "
              f"(gateway {gateway_id} is at version {status.get('current_version')})")
    for err in status.get("errors") or []:
        out.print(f"  {err.get('key')}: {err.get('reason')}", markup=False)


main.add_command(devices)
