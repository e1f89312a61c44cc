"""``device-sim publish`` (one reading or event, mosquitto_pub style) and ``device-sim replay``."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import click

from device_sim import payloads, topics
from device_sim.cli_options import (
    broker_options,
    broker_settings,
    check_device_id,
    echo_summary,
    format_option,
    qos_option,
    run_async,
    setup_logging,
    template_option,
    verbose_option,
)
from device_sim.errors import SimConfigError, SimConnectError
from device_sim.publisher import Publisher
from device_sim.replay import ReplayOptions, group_rows, load_csv, parse_value, replay, stale_warning
from device_sim.runner import close_all, connect_all
from device_sim.settings import BrokerSettings

ACK_TIMEOUT_S = 10.0


@click.command("publish", short_help="Publish one reading or event.")
@broker_options
@qos_option
@click.option("--device", required=True, callback=check_device_id, help="Device id, e.g. d1.")
@click.option("--metric", "metrics", multiple=True,
              help="Metric name; pair each --metric with a --value (repeat for several metrics).")
@click.option("--value", "values", multiple=True,
              help="Reading for the --metric at the same position: a number, or any text to test bad input.")
@click.option("--event", default=None, help="Publish this event (e.g. low_battery) instead of a reading.")
@click.option("--detail", default=None, help="Event detail: JSON (e.g. '{\"battery_pct\": 9}') or plain text.")
@click.option("--seq", type=click.IntRange(0), default=1, show_default=True, help="The reading's seq.")
@click.option("--ts", type=click.IntRange(0), default=None, help="Timestamp, epoch ms.  [default: now]")
@template_option
@format_option
@click.option("--client-id", default=None,
              help="MQTT client id.  [default: the device id when it authenticates, else device-sim-pub-<pid>]")
@verbose_option
def publish_command(**opts: Any) -> None:
    """Publish one reading or one event for a device, then exit.

    \b
    Examples:
      device-sim publish --device d1 --metric temperature --value 21.5
      device-sim publish --device d1 --metric temperature --value 21.5 --metric humidity --value 40
      device-sim publish --device d1 --metric temperature --value 21.5 --format bare
      device-sim publish --device d1 --event low_battery --detail '{"battery_pct": 9}'

    Prints each topic and payload. Exits 1 when the broker cannot be reached or does not
    acknowledge the message (QoS 1/2).
    """
    setup_logging(opts.pop("verbose"))
    broker = broker_settings(opts)
    device, metrics, values, event = opts["device"], opts["metrics"], opts["values"], opts["event"]
    if event is not None and (metrics or values):
        raise click.UsageError("use either --event or --metric/--value, not both")
    if event is None and not metrics:
        raise click.UsageError("nothing to publish: give --metric NAME --value V, or --event NAME")
    if len(metrics) != len(values):
        raise click.UsageError("give exactly one --value for each --metric")
    if event is not None and topics.METRIC_RE.fullmatch(event) is None:
        raise click.BadParameter("use 1-64 of [A-Za-z0-9_.-]", param_hint="--event")
    for metric in metrics:
        if topics.METRIC_RE.fullmatch(metric) is None or metric in ("ts", "seq"):
            raise click.BadParameter(f"bad metric name {metric!r}", param_hint="--metric")
    ts = opts["ts"] if opts["ts"] is not None else int(time.time() * 1000)
    messages: list[tuple[str, bytes]]
    if event is not None:
        body = {"ts": ts, "event": event, "detail": _detail(opts["detail"])}
        messages, qos = [(topics.events_topic(device), payloads.encode_json(body))], 1
    else:
        readings = {m: parse_value(v) for m, v in zip(metrics, values, strict=True)}
        messages, qos = _reading_messages(device, readings, ts, opts), opts["qos"]
    default_id = device if broker.credentials.given else f"device-sim-pub-{os.getpid()}"
    client_id = opts["client_id"] or default_id
    ok = run_async(lambda: _publish_all(broker, client_id, device, messages, qos))
    for topic, payload in messages:
        click.echo(f"{topic} {_show(payload, opts['fmt'] if event is None else 'json')}")
    if not ok:
        raise click.ClickException(f"the broker did not acknowledge the message within {ACK_TIMEOUT_S:g} s")


def _detail(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _reading_messages(device: str, readings: dict[str, Any], ts: int, opts: dict[str, Any]) -> list[tuple[str, bytes]]:
    fmt, template = opts["fmt"], opts["topic_template"]
    if fmt == "bare":
        return [(topics.telemetry_topic(template, device, m), payloads.bare(v)) for m, v in readings.items()]
    if topics.has_metric(template):
        return [(topics.telemetry_topic(template, device, m), payloads.telemetry(ts, opts["seq"], {m: v}, fmt))
                for m, v in readings.items()]
    return [(topics.telemetry_topic(template, device), payloads.telemetry(ts, opts["seq"], readings, fmt))]


def _show(payload: bytes, fmt: str) -> str:
    return payload.hex() if fmt == "msgpack" else payload.decode("utf-8", errors="replace")


async def _publish_all(broker: BrokerSettings, client_id: str, device: str, messages: list[tuple[str, bytes]],
                       qos: int) -> bool:
    publisher = Publisher(broker, client_id, identity=device)
    await publisher.connect()
    try:
        futures = []
        for topic, payload in messages:
            fut = publisher.publish(topic, payload, qos)
            if fut is None:
                raise SimConnectError(f"connection to {broker.address} lost before publishing")
            futures.append(fut)
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures), ACK_TIMEOUT_S)
        except asyncio.TimeoutError:
            return False
        return all(results)
    finally:
        await publisher.close()


@click.command("replay", short_help="Replay recorded readings from a CSV file.")
@broker_options
@qos_option
@click.argument("csv_file", metavar="FILE.csv", type=click.Path(exists=True, dir_okay=False))
@click.option("--speed", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="Replay this many times faster than recorded (e.g. 10).")
@click.option("--fast", is_flag=True, help="Ignore the recorded timing: send as fast as the broker acks.")
@click.option("--restamp", is_flag=True, help="Send the current time as ts instead of the recorded one.")
@template_option
@format_option
@click.option("--client-id", default=None,
              help="MQTT client id of the one connection.  [default: device-sim-replay-<pid>; with per-device "
                   "credentials each device connects on its own, client id = device id]")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@verbose_option
def replay_command(**opts: Any) -> None:
    """Replay recorded readings from FILE.csv at their original pace.

    The file needs a header row naming the columns device, metric, ts, value (ts in epoch seconds
    or milliseconds). Rows of one device with the same ts are sent as one telemetry object; each
    device's seq starts at 1.

    \b
    Examples:
      device-sim replay readings.csv
      device-sim replay readings.csv --speed 10
      device-sim replay readings.csv --fast --restamp --json
    """
    setup_logging(opts.pop("verbose"))
    broker = broker_settings(opts)
    try:
        groups = group_rows(load_csv(Path(opts["csv_file"])))
    except SimConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="FILE.csv") from exc
    if not groups:
        raise click.BadParameter("the file has no data rows", param_hint="FILE.csv")
    warning = stale_warning(groups, int(time.time() * 1000), opts["restamp"])
    if warning:
        click.echo(warning, err=True)
    options = ReplayOptions(fmt=opts["fmt"], qos=opts["qos"], topic_template=opts["topic_template"],
                            speed=opts["speed"], fast=opts["fast"], restamp=opts["restamp"])
    devices = sorted({g.device for g in groups})
    per_device = broker.credentials.per_device
    if per_device and opts["client_id"] is not None:
        raise click.UsageError("--client-id: with per-device credentials each device connects with its own id")

    async def go() -> dict[str, Any]:
        if per_device:
            broker.credentials.check(devices)
            publishers = {d: Publisher(broker, d) for d in devices}
        else:
            shared = Publisher(broker, opts["client_id"] or f"device-sim-replay-{os.getpid()}")
            publishers = dict.fromkeys(devices, shared)
        connections = list(dict.fromkeys(publishers.values()))
        await connect_all(connections, broker)
        try:
            return await replay(groups, publishers, options)
        finally:
            await close_all(connections)

    echo_summary(run_async(go), opts["as_json"], lambda s: (
        f"replayed {s['readings']} readings in {s['messages']} messages: {s['sent']} acknowledged, "
        f"{s['failed']} failed, {s['reconnects']} reconnects in {s['elapsed_s']:.1f} s"))
