"""``edge-gateway fleet``: the fleet load generator (``fleet send``) and the check of a sink's
databases against the manifest it wrote (``fleet verify``).

Exit codes: 0 ok, 1 runtime failure (broker unreachable, a publish refused or lost, or the stores
do not hold exactly the manifest), 2 bad usage.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any, Literal

import click

from bridge.cloud.cli_common import (
    PREFIX_HELP,
    db_option,
    db_password_option,
    exit_failed,
    login_options,
    run_until_signal,
)
from bridge.mqtt.errors import BridgeError, InvalidUrl
from bridge.mqtt.types import Login
from bridge.mqtt.urls import parse_broker_url
from bridge.protocol.topics import DEFAULT_PREFIX, CloudTopics

__all__ = ["fleet"]

_PROBABILITY = click.FloatRange(0.0, 1.0)


@click.group()
def fleet() -> None:
    """Load a sink with many virtual gateways, and check what it stored."""


@fleet.command()
@click.option("--url", required=True, help="Cloud broker, e.g. mqtt://127.0.0.1:1883.")
@click.option("--gateways", type=click.IntRange(1, 9999), default=100, show_default=True,
              help="Virtual gateways (gw-0001 ...), each with its own stream and seqs.")
@click.option("--devices-per-gateway", type=click.IntRange(1, 999), default=10, show_default=True)
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Readings per second, re-sent ones included (0: as fast as the window allows).")
@click.option("--batch-readings", type=click.IntRange(1, 100_000), default=50, show_default=True,
              help="Readings per telemetry batch.")
@click.option("--duration", "duration_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Send for S seconds ...")
@click.option("--batches", type=click.IntRange(min=1), default=None, help="... or until N new batches are sent.")
@click.option("--duplicates", type=_PROBABILITY, default=0.0, show_default=True,
              help="Probability, per batch, of sending an earlier message again unchanged.")
@click.option("--replays", type=_PROBABILITY, default=0.0, show_default=True,
              help="Probability, per batch, of re-sending an earlier batch flagged as replay.")
@click.option("--backlog", type=_PROBABILITY, default=0.0, show_default=True,
              help="Probability, per batch, of holding it back and sending it later flagged replay.")
@click.option("--alerts", type=_PROBABILITY, default=0.0, show_default=True,
              help="Probability, per batch, of an alert on the gateway's control lane.")
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same data.")
@click.option("--connections", type=click.IntRange(1, 64), default=4, show_default=True,
              help="MQTT connections the gateways are spread over.")
@click.option("--window", type=click.IntRange(1, 65535), default=64, show_default=True,
              help="Unacknowledged publishes per connection.")
@click.option("--protocol", type=click.Choice(["5", "3.1.1"]), default="5", show_default=True)
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help=PREFIX_HELP)
@click.option("--manifest", "manifest_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write what a correct sink must end with to this JSON file (for 'fleet verify').")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@login_options
def send(url: str, gateways: int, devices_per_gateway: int, rate: float, batch_readings: int,
         duration_s: float | None, batches: int | None, duplicates: float, replays: float, backlog: float,
         alerts: float,
         seed: int, connections: int, window: int, protocol: Literal["5", "3.1.1"], prefix: str,
         manifest_path: Path | None, as_json: bool, login: Login) -> None:
    """Publish real telemetry batches (and alerts) of many virtual gateways, with duplicates and
    replays, at a chosen rate; print what was sent."""
    from bridge.cloud.fleet import FleetSettings, send_fleet
    from bridge.cloud.fleet_data import Plan
    from bridge.cloud.fleet_data import fleet as make_fleet

    _check_url_and_prefix(url, prefix)
    if (duration_s is None) == (batches is None):
        raise click.UsageError("give --duration or --batches (one of them)")
    settings = FleetSettings(url, rate=rate, duration_s=duration_s, batches=batches, connections=connections,
                             window=window, protocol=protocol, login=login)
    plan = Plan(make_fleet(gateways, devices_per_gateway, seed=seed, start_ms=int(time.time() * 1000), prefix=prefix,
                           streams=random.Random()),
                random.Random(seed), batch_readings=batch_readings, duplicates=duplicates, replays=replays,
                alerts=alerts, backlog=backlog)
    results: list[Any] = []

    async def go(stop: asyncio.Event) -> None:
        results.append(await send_fleet(plan, settings, stop))

    try:
        run_until_signal(go)
    except BridgeError as exc:
        exit_failed(exc, "check --url and that the broker is running and accepts this client")
    summary = {**vars(results[0]), "rate": round(results[0].rate, 1), "gateways": gateways,
               "elapsed_s": round(results[0].elapsed_s, 3), "checksum": f"{plan.manifest.checksum:016x}"}
    plan.manifest.sent = summary
    if manifest_path is not None:
        try:
            plan.manifest.write(manifest_path)
        except OSError as exc:
            exit_failed(exc, "--manifest must name a writable file")
    _print_summary(summary, as_json)


def _check_url_and_prefix(url: str, prefix: str) -> None:
    try:
        parse_broker_url(url)
    except InvalidUrl as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from exc
    try:
        _ = CloudTopics("gw-0001", prefix).prefix
    except (ValueError, KeyError) as exc:
        raise click.BadParameter(f"{prefix!r}: {exc}", param_hint="--prefix") from exc


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary))
        return
    s = summary
    click.echo(f"sent {s['messages']} messages in {s['elapsed_s']:.1f} s from {s['gateways']} gateways: "
               f"{s['batches']} batches ({s['readings']} readings), {s['alerts']} alerts, "
               f"{s['duplicates']} duplicates, {s['replays']} replays, {s['backlog']} held back and sent late; "
               f"{s['rate']:.0f} readings/s (re-sent included, PUBACKs awaited)")


@fleet.command()
@click.option("--db", "dbs", required=True, multiple=True,
              help="The sink's store: a SQLite file or a postgresql:// URL (repeat for workers with a SQLite "
                   "file each).")
@db_password_option
@click.option("--manifest", "manifest_path", required=True,
              type=click.Path(path_type=Path, dir_okay=False, exists=True), help="Written by 'fleet send'.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def verify(dbs: tuple[str, ...], db_password_file: Path | None, manifest_path: Path, as_json: bool) -> None:
    """Check that the sink databases hold exactly what the manifest names: every batch key once, the
    readings count, their checksum and the alerts. Exits 1 when they do not."""
    from bridge.cloud.fleet_manifest import Manifest
    from bridge.cloud.fleet_verify import verify as verify_stores

    stores = [db_option(db, db_password_file, must_exist=True) for db in dbs]
    try:
        manifest = Manifest.read(manifest_path)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--manifest") from exc
    try:
        verdict = verify_stores(manifest, stores, db_password_file)
    except BridgeError as exc:
        exit_failed(exc, "--db must name sink databases", code=2 if any(isinstance(db, str) for db in stores) else 1)
    seen = verdict.observed
    if as_json:
        click.echo(json.dumps({"ok": verdict.ok, "problems": verdict.problems, "readings": seen.readings,
                               "checksum": f"{seen.checksum:016x}", "batch_keys": len(seen.keys),
                               "alerts": seen.alerts}))
    else:
        click.echo(f"{len(dbs)} database(s): {len(seen.keys)} batch keys, {seen.readings} readings "
                   f"(checksum {seen.checksum:016x}), {seen.alerts} alerts; manifest: {manifest.batches} batches, "
                   f"{manifest.readings} readings (checksum {manifest.checksum:016x}), {manifest.alerts} alerts")
        for problem in verdict.problems:
            click.echo(f"MISMATCH: {problem}")
        click.echo("OK: the stores hold exactly the manifest" if verdict.ok else "FAILED")
    if not verdict.ok:
        raise SystemExit(1)
