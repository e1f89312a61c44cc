"""What every ``edge-gateway`` command group shares: the error console, the config option and
loading a config (exit 2 naming each bad key)."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import click
from rich.console import Console
from rich.markup import escape

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
