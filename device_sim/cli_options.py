"""Options shared by the CLI commands (broker connection, payload format) and error → exit code mapping.

Exit codes: 0 done, 1 the broker could not be reached (or a publish was not acknowledged),
2 bad arguments or input files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from device_sim import topics
from device_sim.credentials import Credentials, load_password_file
from device_sim.errors import SimConfigError, SimConnectError
from device_sim.payloads import FORMATS
from device_sim.settings import BrokerSettings

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_BROKER_OPTIONS = (
    click.option("--host", default="127.0.0.1", show_default=True,
                 help="Broker host name or IP address, or a URL mqtt://HOST[:PORT] or mqtts://HOST[:PORT] "
                      "(mqtts: TLS)."),
    click.option("-p", "--port", type=click.IntRange(1, 65535), default=None,
                 help="Broker port.  [default: 1883, or 8883 with TLS]"),
    click.option("--username", envvar="DEVICE_SIM_USERNAME", default=None, metavar="TEMPLATE",
                 help="MQTT username; {device_id} is replaced by each device's id (or set DEVICE_SIM_USERNAME).  "
                      "[default: the device id when a password is given]"),
    click.option("--password", envvar="DEVICE_SIM_PASSWORD", default=None, metavar="TEMPLATE",
                 help="MQTT password, {device_id} replaced as for --username (or set DEVICE_SIM_PASSWORD, which "
                      "keeps it out of the process list)."),
    click.option("--password-file", envvar="DEVICE_SIM_PASSWORD_FILE", default=None,
                 type=click.Path(exists=True, dir_okay=False),
                 help="Plaintext lines device_id:password ('#' starts a comment): each device's own password "
                      "(or set DEVICE_SIM_PASSWORD_FILE)."),
    click.option("--tls", is_flag=True,
                 help="Connect with TLS (implied by mqtts://, --cafile, --cert and --key)."),
    click.option("--cafile", type=click.Path(exists=True, dir_okay=False),
                 help="CA certificate (PEM) to verify the broker; default: the system CAs."),
    click.option("--cert", "--certfile", "cert", default=None, metavar="TEMPLATE",
                 help="Client certificate (PEM) for brokers that require one; {device_id} is replaced by each "
                      "device's id, e.g. 'certs/{device_id}.crt'."),
    click.option("--key", "--keyfile", "key", default=None, metavar="TEMPLATE",
                 help="Private key (PEM) of --cert, when it is not inside that file; {device_id} as for --cert."),
    click.option("--insecure", is_flag=True,
                 help="With TLS: do not verify the broker's certificate or host name (test setups only)."),
    click.option("--mqtt-version", type=click.Choice(["3.1.1", "5"]), default="3.1.1", show_default=True,
                 help="MQTT protocol version. The gateway's embedded broker speaks 3.1.1 only."),
    click.option("--connect-timeout", type=click.FloatRange(0.1, 300), default=10.0, show_default=True,
                 help="Seconds to wait for the broker to accept a connection."),
)
_SCHEMES = {"mqtt": False, "mqtts": True}


def broker_options(func: F) -> F:
    """Add the broker connection options; the command receives them as keyword arguments."""
    for option in reversed(_BROKER_OPTIONS):
        func = option(func)
    return func


def broker_settings(opts: dict[str, Any]) -> BrokerSettings:
    """Pop the broker options from ``opts`` and build the settings (click errors, exit 2, naming the
    option on bad values or combinations)."""
    host, url_port, url_tls = _parse_host(opts.pop("host"))
    port = opts.pop("port")
    if port is not None and url_port is not None and port != url_port:
        raise click.UsageError(f"--port {port} contradicts the port {url_port} in --host")
    cafile, cert, key = opts.pop("cafile"), opts.pop("cert"), opts.pop("key")
    wants_tls = bool(opts.pop("tls") or cafile or cert or key)
    if url_tls is False and wants_tls:
        raise click.UsageError("--host mqtt://... means a plain connection: use mqtts:// for TLS")
    tls = bool(url_tls or wants_tls)
    insecure = opts.pop("insecure")
    if insecure and not tls:
        raise click.UsageError("--insecure only makes sense with --tls")
    password_file = opts.pop("password_file")
    try:
        passwords = load_password_file(Path(password_file)) if password_file is not None else None
        credentials = Credentials(username=opts.pop("username"), password=opts.pop("password"),
                                  passwords=passwords, cert=cert, key=key)
    except SimConfigError as exc:
        raise option_error(exc) from exc
    port = port if port is not None else url_port
    return BrokerSettings(
        host=host, port=port if port is not None else (8883 if tls else 1883), credentials=credentials,
        tls=tls, cafile=cafile, insecure=insecure, mqtt_version=opts.pop("mqtt_version"),
        connect_timeout_s=opts.pop("connect_timeout"),
    )


def _parse_host(text: str) -> tuple[str, int | None, bool | None]:
    """``host`` or ``mqtt[s]://host[:port]`` -> (host, port or None, TLS or None when not a URL)."""
    if "://" not in text:
        return text, None, None
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError as exc:
        raise click.BadParameter(f"bad port in {text!r}", param_hint="--host") from exc
    if parts.scheme not in _SCHEMES or not parts.hostname or parts.path.strip("/") or parts.query \
            or parts.username is not None:
        raise click.BadParameter(f"{text!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]",
                                 param_hint="--host")
    return parts.hostname, port, _SCHEMES[parts.scheme]


def option_error(exc: SimConfigError) -> click.UsageError:
    """The click error for a configuration error: names the option when the error knows it."""
    if exc.option is not None:
        return click.BadParameter(str(exc), param_hint=exc.option)
    return click.UsageError(str(exc))


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


def echo_summary(summary: dict[str, Any], as_json: bool, text: Callable[[dict[str, Any]], str]) -> None:
    """Print a command's summary: one JSON line with ``--json``, else ``text(summary)``."""
    click.echo(json.dumps(summary) if as_json else text(summary))


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
        raise option_error(exc) from exc


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
