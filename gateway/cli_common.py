"""What every ``edge-gateway`` command group shares: the error console, the config option and
loading a config (exit 2 naming each bad key), the cloud broker login options."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from bridge.mqtt.types import Login, TlsSettings
from gateway.config import GatewayConfig, Secrets, load_config
from gateway.errors import ConfigError

err_console = Console(stderr=True, soft_wrap=True)


def exit_invalid(exc: ConfigError) -> NoReturn:
    """Print each bad key of a config file and exit 2."""
    err_console.print(f"[red]invalid configuration[/red] in {exc.source}:", highlight=False)
    for key, reason in exc.problems:
        err_console.print(f"  {key}: {reason}", highlight=False, markup=False)
    raise SystemExit(2) from exc


def exit_failed(exc: Exception, fix: str = "") -> NoReturn:
    """An operational error (busy port, unwritable directory, unreachable broker): one line naming
    the cause and, when known, the fix; exit 1. Never a traceback."""
    text = " ".join(str(exc).split())
    err_console.print(f"[red]error:[/red] {escape(text)}" + (f"; {escape(fix)}" if fix else ""), highlight=False)
    raise SystemExit(1) from exc


def load_or_exit(path: Path | None) -> tuple[GatewayConfig, Secrets]:
    if path is None:
        return GatewayConfig(), Secrets()
    try:
        return load_config(path)
    except ConfigError as exc:
        exit_invalid(exc)


CONFIG_OPTION = click.option(
    "-c", "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
    help="TOML config file (see conf/gateway.toml). Without it, embedded defaults are used.",
)


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
