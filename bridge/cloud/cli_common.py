"""What the cloud-side commands share: the error console, logging and signal handling, the cloud
broker login options, and the operator helpers (validate the arguments, ask a gateway through the
cloud broker, print its answer). ``edge-gateway push-config`` uses them too."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, NoReturn

import click

from bridge.cloud.sink_port import is_postgres_url
from bridge.mqtt.errors import BridgeError, InvalidUrl
from bridge.mqtt.types import ANONYMOUS, Login, TlsSettings
from bridge.mqtt.urls import parse_broker_url
from bridge.protocol.records import ControlRecord
from bridge.protocol.topics import ID_RULE, CloudTopics, valid_id


class StderrConsole:
    """Prints to stderr through rich, imported on first use: ``edge-gateway run`` as a service never
    prints through it, and rich would cost memory for the life of the process."""

    def print(self, *objects: Any, **options: Any) -> None:
        from rich.console import Console

        Console(stderr=True, soft_wrap=True).print(*objects, **options)


err_console = StderrConsole()
PREFIX_HELP = "Cloud topic prefix pattern."


db_password_option = click.option(
    "--db-password-file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
    help="File holding the PostgreSQL password (one trailing newline is ignored); keeps it out of the URL.")


def db_option(db: str, password_file: Path | None, *, must_exist: bool) -> Path | str:
    """--db as the store factory takes it: a PostgreSQL URL as is, anything else a SQLite path."""
    if is_postgres_url(db):
        return db
    if password_file is not None:
        raise click.UsageError("--db-password-file needs a PostgreSQL --db (postgresql://...)")
    path = Path(db)
    if path.is_dir() or (must_exist and not path.exists()):
        raise click.BadParameter(f"{'is a directory' if path.is_dir() else 'does not exist'}: {db}",
                                 param_hint="'--db'")
    return path


def exit_failed(exc: Exception, fix: str = "", code: int = 1) -> NoReturn:
    """An operational error (busy port, unwritable directory, unreachable broker): one line naming
    the cause and, when known, the fix; exit ``code`` (1; 2 for a bad option value). Never a traceback."""
    from rich.markup import escape

    text = " ".join(str(exc).split())
    err_console.print(f"[red]error:[/red] {escape(text)}" + (f"; {escape(fix)}" if fix else ""), highlight=False)
    raise SystemExit(code) from exc


def setup_logging(level: str) -> None:
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=Console(stderr=True, soft_wrap=True), show_path=False)
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


def _read_password(password_env: str | None, password_file: Path | None) -> str | None:
    if password_env and password_file:
        raise click.UsageError("give --password-env or --password-file, not both")
    if password_env:
        value = os.environ.get(password_env)
        if value is None:
            raise click.UsageError(f"--password-env: environment variable {password_env} is not set")
        return value
    if password_file:
        try:
            return password_file.read_text().strip()
        except OSError as exc:
            raise click.UsageError(f"--password-file: cannot read {password_file}: {exc.strerror}") from exc
    return None


def login_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the cloud broker login options (``--username``, ``--password-env``/``--password-file``,
    ``--cafile``, ``--cert``, ``--key``) to a command; it receives them as one ``login``. The
    password never appears on the command line, so ``ps`` does not show it."""

    @functools.wraps(command)
    def wrapper(*args: Any, username: str | None, password_env: str | None, password_file: Path | None,
                cafile: Path | None, cert: Path | None, key: Path | None, **kwargs: Any) -> Any:
        if key and not cert:
            raise click.UsageError("--key needs --cert")
        password = _read_password(password_env, password_file)
        if password is not None and username is None:
            raise click.UsageError("a password needs --username")
        tls = (TlsSettings(ca_file=str(cafile) if cafile else None, cert_file=str(cert) if cert else None,
                           key_file=str(key) if key else None) if cafile or cert else None)
        return command(*args, login=Login(username, password, tls), **kwargs)

    readable = click.Path(path_type=Path, dir_okay=False, exists=True)
    options = [
        click.option("--username", default=None, help="User name on the cloud broker."),
        click.option("--password-env", default=None, metavar="VAR",
                     help="Read the password from this environment variable."),
        click.option("--password-file", type=readable, default=None,
                     help="Read the password from this file (first line)."),
        click.option("--cafile", type=readable, default=None,
                     help="CA certificate(s) to verify the broker with (turns TLS on)."),
        click.option("--cert", type=readable, default=None, help="Client certificate (PEM; turns TLS on)."),
        click.option("--key", type=readable, default=None,
                     help="Private key of --cert (default: in the --cert file)."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def require_plot() -> None:
    """Exit 2 with the install hint when --plot is asked for without the plot extra."""
    from bridge.cloud.errors import PlotUnavailable
    from bridge.cloud.plot import require_matplotlib

    try:
        require_matplotlib()
    except PlotUnavailable as exc:
        from rich.markup import escape

        err_console.print(f"[red]error:[/red] --plot: {escape(str(exc))}", highlight=False)
        raise SystemExit(2) from exc


def ask_gateway(url: str, topic: str, payload: bytes, reply_topic: str, match: Callable[[ControlRecord], bool],
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


