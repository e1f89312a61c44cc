"""The cloud-side commands of ``edge-gateway``: ``sink`` (store every gateway's uplink in SQLite or
PostgreSQL),
``report`` (what the sink stored: readings, duplicates, gaps, streams) and ``command`` (send a
command to a device through its gateway and print the answer). ``gateway.cli`` adds them to its
group; they keep their names, options and exit codes there.

Exit codes: 0 ok, 1 runtime failure (or the answer/report says so; a SQLite ``--db`` that cannot be
opened), 2 bad usage (including a PostgreSQL ``--db`` that cannot be used: bad URL, unreachable
server, refused login, no such database).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any, Literal

import click
from rich.console import Console

from bridge.cloud.cli_common import (
    PREFIX_HELP,
    ask_gateway,
    db_option,
    db_password_option,
    err_console,
    exit_failed,
    login_options,
    operator_topics,
    require_plot,
    run_until_signal,
    setup_logging,
    show_answer,
)
from bridge.cloud.errors import StoreUnavailable, StoreUnreachable
from bridge.cloud.sink_port import is_postgres_url
from bridge.mqtt.types import Login
from bridge.protocol.records import ControlRecord, Response
from bridge.protocol.topics import DEFAULT_PREFIX, ID_RULE, valid_id

__all__ = ["command", "report", "sink"]


@click.command()
@click.option("--url", "urls", required=True, multiple=True,
              help="Cloud broker, e.g. mqtt://127.0.0.1:1883 or mqtts://host. Repeat it for the nodes of a "
                   "cluster: the sink connects to the first that accepts, trying them in turn (on every reconnect "
                   "too).")
@click.option("--db", "db", required=True, metavar="FILE|URL",
              help="SQLite file to store readings and alerts in (created if missing), or a PostgreSQL URL "
                   "postgresql://user@host:port/dbname (tables created on start; password from PGPASSWORD, "
                   "~/.pgpass or --db-password-file).")
@db_password_option
@click.option("--shared", "shared_group", default=None,
              help="Join an MQTT 5 shared subscription group so several sinks split the load.")
@click.option("--protocol", type=click.Choice(["5", "3.1.1"]), default="5", show_default=True)
@click.option("--worker", default=None,
              help="This worker's name in a --shared group (e.g. 1, 2, 3), part of the default client id: "
                   "workers writing one PostgreSQL database each need their own, kept across restarts.")
@click.option("--client-id", default=None,
              help="MQTT client id (default: derived from the host, the database and --worker). Give each "
                   "sink of a --shared group its own stable one.")
@click.option("--clean-session", is_flag=True,
              help="A new MQTT session on every connect instead of a persistent one. Only for brokers that "
                   "hand a dead shared-subscription member's messages to the others when its session ends "
                   "(EMQX); elsewhere a killed sink loses what it had not acknowledged (docs/CLOUD.md).")
@click.option("--group-max-messages", type=click.IntRange(min=1), default=500, show_default=True,
              help="At most this many messages are stored in one transaction (group commit); the sink asks "
                   "the broker for twice as many in flight (MQTT 5 receive maximum).")
@click.option("--group-max-readings", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="A group stops taking messages once it holds this many readings.")
@click.option("--files-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Also receive the gateways' file uploads: assembled under DIR/.incoming/GATEWAY, stored "
                   "verified as DIR/GATEWAY/NAME, listed by 'report'. Give it to ONE sink per --shared group "
                   "(the file topics are not shared; docs/CLOUD.md).")
@click.option("--files-max-bytes", type=click.IntRange(min=0), default=1024**3, show_default=True,
              help="Refuse (receipt 'failed', reason too_large) uploads larger than this.")
@click.option("--files-stall-s", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Ask a gateway for the chunks of an upload that got none for this long (then doubling up to "
                   "10 min).")
@click.option("--files-expire-s", type=click.FloatRange(min=1), default=7 * 86_400.0, show_default=True,
              help="Drop an upload under way that got no message for this long (receipt 'failed', reason "
                   "expired; its work files are deleted).")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help=PREFIX_HELP)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--start-timeout", "start_timeout_s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Exit 1 when no broker accepts the first connection within S seconds (0 = keep trying). "
                   "Later reconnects always keep trying.")
@login_options
def sink(urls: tuple[str, ...], db: str, db_password_file: Path | None, shared_group: str | None,
         protocol: Literal["5", "3.1.1"], worker: str | None, client_id: str | None, clean_session: bool,
         group_max_messages: int, group_max_readings: int, files_dir: Path | None, files_max_bytes: int,
         files_stall_s: float, files_expire_s: float, prefix: str, log_level: str, start_timeout_s: float,
         login: Login) -> None:
    """Cloud side: store every gateway's batches and alerts in SQLite or PostgreSQL, dropping
    duplicates by (gateway, stream, lane, seq) and recording sequence gaps; with --files-dir,
    receive the gateways' file uploads too."""
    from bridge.cloud.sink import FileOptions, GroupLimits, run_sink
    from bridge.mqtt.errors import BridgeError

    db_path = db_option(db, db_password_file, must_exist=False)
    setup_logging(log_level)
    if shared_group and protocol != "5":
        raise click.UsageError("--shared needs --protocol 5")
    if worker is not None and not valid_id(worker):
        raise click.BadParameter(f"{worker!r}: {ID_RULE}", param_hint="'--worker'")
    if shared_group and is_postgres_url(db) and worker is None and client_id is None:
        raise click.UsageError("workers of a --shared group writing one PostgreSQL database need --worker NAME "
                               "(or --client-id), each its own, so that each keeps its own MQTT session")

    async def go(stop: asyncio.Event) -> None:
        await run_sink(list(urls), db_path, protocol=protocol, shared_group=shared_group, prefix=prefix, stop=stop,
                       client_id=client_id, worker=worker, persistent=not clean_session,
                       start_timeout_s=start_timeout_s or None, login=login, db_password_file=db_password_file,
                       group_limits=GroupLimits(group_max_messages, group_max_readings),
                       files=None if files_dir is None else FileOptions(files_dir, files_max_bytes, files_stall_s,
                                                                        expire_s=files_expire_s))

    try:
        run_until_signal(go)
    except StoreUnreachable as exc:
        exit_failed(exc, "retrying may help (a service manager restarts the sink)")
    except StoreUnavailable as exc:
        exit_failed(exc, code=2 if is_postgres_url(db) else 1)
    except BridgeError as exc:
        exit_failed(exc)


@click.command()
@click.option("--db", "db", required=True, metavar="FILE|URL",
              help="SQLite file or PostgreSQL URL (postgresql://user@host:port/dbname) written by "
                   "'edge-gateway sink'.")
@db_password_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--device", default=None, help="Only this device (and the gateways its data came through).")
@click.option("--fail-on-gaps", is_flag=True, help="Exit 1 when any reported gateway misses seqs (for scripts).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write a timeline PNG (readings per minute, replayed batches); needs the 'plot' extra.")
def report(db: str, db_password_file: Path | None, as_json: bool, device: str | None, fail_on_gaps: bool,
           plot_path: Path | None) -> None:
    """Per gateway and device: readings, alerts, duplicate batches dropped, sequence gaps.

    Exits 0, or 1 with --fail-on-gaps when seqs are missing."""
    from bridge.cloud.report import build_report, has_gaps, render_report
    from bridge.mqtt.errors import BridgeError

    db_path = db_option(db, db_password_file, must_exist=True)
    if plot_path is not None:
        require_plot()
    try:
        data = build_report(db_path, device, password_file=db_password_file)
    except StoreUnavailable as exc:
        exit_failed(exc, code=2 if is_postgres_url(db) else 1)
    except BridgeError as exc:
        exit_failed(exc)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        render_report(data, Console())
    if plot_path is not None:
        from bridge.cloud.plot import write_png
        from bridge.cloud.timeline import from_sink

        write_png(from_sink(db_path, device, password_file=db_password_file), plot_path)
        err_console.print(f"timeline written to {plot_path}", highlight=False, markup=False)
    if fail_on_gaps and has_gaps(data):
        missing = data["totals"]["missing"]
        err_console.print(f"[red]gaps:[/red] {missing['telemetry']} telemetry and {missing['control']} control "
                          "records missing", highlight=False)
        raise SystemExit(1)


@click.command("command")
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
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help=PREFIX_HELP)
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

    def answers_this(record: ControlRecord) -> bool:
        return isinstance(record, Response) and record.id == cid and record.device == device

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


