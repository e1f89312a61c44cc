"""Options shared by the CLI commands (broker connection, payload format) and error → exit code mapping.

Exit codes: 0 done, 1 the broker could not be reached (or a publish was not acknowledged),
2 bad arguments or input files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import click

from device_sim import topics
from device_sim.errors import SimConfigError, SimConnectError
from device_sim.payloads import FORMATS
from device_sim.settings import BrokerSettings

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_BROKER_OPTIONS = (
    click.option("--host", default="127.0.0.1", show_default=True, help="Broker host name or IP address."),
    click.option("-p", "--port", type=click.IntRange(1, 65535), default=None,
                 help="Broker port.  [default: 1883, or 8883 with --tls]"),
    click.option("--username", envvar="DEVICE_SIM_USERNAME", default=None,
                 help="MQTT username (or set DEVICE_SIM_USERNAME)."),
    click.option("--password", envvar="DEVICE_SIM_PASSWORD", default=None,
                 help="MQTT password (or set DEVICE_SIM_PASSWORD, which keeps it out of the process list)."),
    click.option("--tls", is_flag=True, help="Connect with TLS (implied by --cafile, --certfile, --keyfile)."),
    click.option("--cafile", type=click.Path(exists=True, dir_okay=False),
                 help="CA certificate (PEM) to verify the broker; default: the system CAs."),
    click.option("--certfile", type=click.Path(exists=True, dir_okay=False),
                 help="Client certificate (PEM) for brokers that require one."),
    click.option("--keyfile", type=click.Path(exists=True, dir_okay=False),
                 help="Private key (PEM) of --certfile, when it is not inside that file."),
    click.option("--insecure", is_flag=True,
                 help="With TLS: do not verify the broker's certificate or host name (test setups only)."),
    click.option("--mqtt-version", type=click.Choice(["3.1.1", "5"]), default="3.1.1", show_default=True,
                 help="MQTT protocol version. The gateway's embedded broker speaks 3.1.1 only."),
    click.option("--connect-timeout", type=click.FloatRange(0.1, 300), default=10.0, show_default=True,
                 help="Seconds to wait for the broker to accept a connection."),
)


def broker_options(func: F) -> F:
    """Add the broker connection options; the command receives them as keyword arguments."""
    for option in reversed(_BROKER_OPTIONS):
        func = option(func)
    return func


def broker_settings(opts: dict[str, Any]) -> BrokerSettings:
    """Pop the broker options from ``opts`` and build the settings (UsageError on bad combinations)."""
    cafile, certfile, keyfile = opts.pop("cafile"), opts.pop("certfile"), opts.pop("keyfile")
    tls = bool(opts.pop("tls") or cafile or certfile or keyfile)
    insecure = opts.pop("insecure")
    if insecure and not tls:
        raise click.UsageError("--insecure only makes sense with --tls")
    if keyfile and not certfile:
        raise click.UsageError("--keyfile needs --certfile")
    username, password = opts.pop("username"), opts.pop("password")
    if password is not None and username is None:
        raise click.UsageError("--password needs --username")
    port = opts.pop("port")
    return BrokerSettings(
        host=opts.pop("host"), port=port if port is not None else (8883 if tls else 1883),
        username=username, password=password, tls=tls, cafile=cafile, certfile=certfile, keyfile=keyfile,
        insecure=insecure, mqtt_version=opts.pop("mqtt_version"), connect_timeout_s=opts.pop("connect_timeout"),
    )


def format_option(func: F) -> F:
    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default="json", show_default=True,
        help="Payload format: a JSON object, a msgpack object, or 'bare' (the number as text on "
             "devices/{id}/telemetry/{metric}, without ts and seq).")(func)


def qos_option(func: F) -> F:
    return click.option("-q", "--qos", type=click.IntRange(0, 2), default=1, show_default=True,
                        help="QoS of telemetry publishes (events and responses always use QoS 1).")(func)


def template_option(func: F) -> F:
    return click.option(
        "--topic-template", default=topics.DEFAULT_TEMPLATE, show_default=True, callback=_check_template,
        help="Telemetry topic; {device_id} is required, {metric} optional (per-metric messages).")(func)


def verbose_option(func: F) -> F:
    return click.option("-v", "--verbose", count=True,
                        help="Log more to stderr (-v: connection events, -vv: debug).")(func)


def _check_template(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        topics.check_template(value)
    except SimConfigError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


def check_device_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not topics.is_valid_device_id(value):
        raise click.BadParameter(f"{value!r} is not a valid device id: use 1-64 of [A-Za-z0-9_.-]")
    return value


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_async(main: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; map simulator errors to click errors (connect → exit 1, config → exit 2)."""
    try:
        return asyncio.run(_as_coro(main))
    except SimConnectError as exc:
        raise click.ClickException(str(exc)) from exc
    except SimConfigError as exc:
        raise click.UsageError(str(exc)) from exc


async def _as_coro(main: Callable[[], Awaitable[T]]) -> T:
    return await main()


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """First Ctrl-C / SIGTERM calls ``stop`` (graceful); a second one interrupts as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    sigs = (signal.SIGINT, signal.SIGTERM)

    def handler(sig: signal.Signals) -> None:
        click.echo(f"\n{sig.name}: stopping, draining queued messages (again to abort)", err=True)
        for s in sigs:
            loop.remove_signal_handler(s)
        stop()

    for s in sigs:
        loop.add_signal_handler(s, handler, s)
    try:
        yield
    finally:
        for s in sigs:
            loop.remove_signal_handler(s)
