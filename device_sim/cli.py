"""``device-sim``: simulate MQTT devices that follow the gateway's device topic contract."""

from __future__ import annotations

import json
from typing import Any

import click

from device_sim import topics
from device_sim.builtin_profiles import BUILTIN_PROFILES, DEFAULT_PROFILE
from device_sim.cli_files import send_file_command
from device_sim.cli_options import (
    broker_options,
    broker_settings,
    format_option,
    qos_option,
    run_async,
    setup_logging,
    stop_on_signals,
    template_option,
    verbose_option,
)
from device_sim.cli_tools import publish_command, replay_command
from device_sim.errors import SimConfigError
from device_sim.profiles import Profile, resolve_profile
from device_sim.progress import live_progress, stdout_is_terminal, summary_text
from device_sim.runner import Runner
from device_sim.settings import DeviceSettings, RunSettings

MAX_RATE_HZ = 1000.0


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-mqtt-gateway", prog_name="device-sim")
def main() -> None:
    """Simulate MQTT devices (sensors) that publish readings, raise events and answer commands,
    exactly as the gateway's documented device topic contract says.

    \b
    Quick start (the lab's broker on 127.0.0.1:1883):
      device-sim run --devices 50 --rate-hz 1 --duration 60
      device-sim publish --device d1 --metric temperature --value 21.5
      device-sim profiles
    """


def _profiles(_ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> tuple[Profile, ...]:
    try:
        return tuple(resolve_profile(spec) for spec in (value or (DEFAULT_PROFILE,)))
    except SimConfigError as exc:
        raise click.BadParameter(str(exc)) from exc


def _prefix(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        topics.device_ids(value, 1)
    except SimConfigError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


@main.command("run", short_help="Simulate N devices against a broker.")
@broker_options
@qos_option
@click.option("--devices", type=click.IntRange(1, 100_000), default=1, show_default=True,
              help="Number of simulated devices.")
@click.option("--id-prefix", default="dev-", show_default=True, callback=_prefix,
              help="Device ids are PREFIX0001, PREFIX0002, ... (letters, digits, '_', '.', '-').")
@click.option("--rate-hz", type=click.FloatRange(0, MAX_RATE_HZ, min_open=True), default=1.0,
              show_default=True, help="Samples per second per device.")
@click.option("--duration", type=click.FloatRange(0, min_open=True), default=None,
              help="Stop sampling after this many seconds.  [default: run until Ctrl-C]")
@click.option("--count", type=click.IntRange(1), default=None,
              help="Stop after this many samples per device (instead of --duration).")
@click.option("--seed", type=int, default=None,
              help="Random seed: the same seed gives the same readings.  [default: random]")
@click.option("--profile", "profiles", multiple=True, callback=_profiles, metavar="NAME|FILE[#NAME]",
              help="What the devices measure: a built-in profile (see 'device-sim profiles') or a TOML "
                   "profile file. Repeat to mix profiles (assigned round-robin).  [default: room]")
@template_option
@format_option
@click.option("--metrics-per-message", type=click.Choice(["all", "one"]), default="all", show_default=True,
              help="'all': one object with every metric per sample; 'one': one object per metric "
                   "(each with its own seq).")
@click.option("--jitter", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Random delay of each sample, as a fraction of the sampling period.")
@click.option("--anomalies", is_flag=True,
              help="Inject the profile's anomalies (spikes, drift, stuck values, dropouts, garbage) and "
                   "random events. Off by default, so plain runs produce clean data.")
@click.option("--shared-connection", is_flag=True,
              help="Publish for all devices over one connection (for very large device counts). "
                   "Default: one connection per device, client id = device id.")
@click.option("--backlog", type=click.IntRange(1), default=1000, show_default=True,
              help="Messages each device holds while disconnected; samples beyond it count as failed.")
@click.option("--drain-timeout", type=click.FloatRange(0), default=10.0, show_default=True,
              help="Seconds to wait at the end for queued messages to be acknowledged.")
@click.option("--reboot-pause", type=click.FloatRange(0, 3600), default=2.0, show_default=True,
              help="Seconds a device stays offline after a 'reboot' command (unless the command says).")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON (for scripts).")
@verbose_option
def run_command(**opts: Any) -> None:
    """Simulate N devices publishing telemetry to a broker, and answer their commands.

    Each device publishes to devices/{id}/telemetry, raises events on devices/{id}/events and answers
    commands from devices/{id}/commands/+ on devices/{id}/responses. Every telemetry message carries
    "ts" (epoch ms) and "seq" (1, 2, 3, ... per device), so a receiver can prove loss, duplicates and
    reordering. While the broker is away, devices keep a bounded backlog and reconnect with backoff.

    \b
    Examples:
      device-sim run --devices 50 --rate-hz 1 --duration 60
      device-sim run --devices 10 --count 100 --seed 7 --json
      device-sim run --profile freezer --anomalies --format msgpack
      device-sim run --devices 5000 --shared-connection --rate-hz 0.2
    """
    setup_logging(opts.pop("verbose"))
    broker = broker_settings(opts)
    if opts["duration"] is not None and opts["count"] is not None:
        raise click.UsageError("use either --duration or --count, not both")
    per_metric = opts["metrics_per_message"] == "one"
    if topics.has_metric(opts["topic_template"]) and opts["fmt"] != "bare" and not per_metric:
        raise click.UsageError("a --topic-template with {metric} needs --metrics-per-message one or --format bare")
    profiles = tuple(p.with_anomalies(opts["anomalies"]) for p in opts["profiles"])
    device = DeviceSettings(
        rate_hz=opts["rate_hz"], qos=opts["qos"], fmt=opts["fmt"], one_metric_per_message=per_metric,
        topic_template=opts["topic_template"], jitter=opts["jitter"], count=opts["count"],
        duration_s=opts["duration"], backlog=opts["backlog"], reboot_pause_s=opts["reboot_pause"],
        max_rate_hz=MAX_RATE_HZ,
    )
    settings = RunSettings(
        devices=opts["devices"], id_prefix=opts["id_prefix"], seed=opts["seed"], profiles=profiles,
        shared_connection=opts["shared_connection"], drain_timeout_s=opts["drain_timeout"], device=device,
    )
    as_json = opts["as_json"]
    show_progress = stdout_is_terminal() and not as_json

    async def go() -> dict[str, Any]:
        runner = Runner(settings, broker)
        with stop_on_signals(runner.request_stop):
            async with live_progress(runner.progress, show_progress):
                return await runner.run()

    summary = run_async(go)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(summary_text(summary))


@main.command("profiles", short_help="List the built-in profiles.")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Also list the profiles of this TOML file.")
@click.option("-v", "--verbose", is_flag=True, help="Show every metric's range, unit and signal.")
def profiles_command(path: str | None, verbose: bool) -> None:
    """List the built-in profiles (and those of --file) and what they simulate."""
    from pathlib import Path

    from device_sim.profiles import load_profiles_file

    found = dict(BUILTIN_PROFILES)
    if path is not None:
        try:
            found.update({f"{path}#{name}": p for name, p in load_profiles_file(Path(path)).items()})
        except SimConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--file") from exc
    for name, profile in found.items():
        click.echo(f"{name:<10} {profile.description}")
        metrics = ", ".join(f"{m} ({spec.unit})" if spec.unit else m for m, spec in profile.metrics.items())
        click.echo(f"{'':<10} metrics: {metrics}")
        if verbose:
            for metric, spec in profile.metrics.items():
                click.echo(f"{'':<12} {metric}: {spec.signal} around {spec.base:g} {spec.unit}, valid "
                           f"[{spec.min:g}, {spec.max:g}], resolution {spec.resolution:g}")
            if profile.events:
                click.echo(f"{'':<12} events (with --anomalies): {', '.join(e.name for e in profile.events)}")


main.add_command(publish_command)
main.add_command(replay_command)
main.add_command(send_file_command)
