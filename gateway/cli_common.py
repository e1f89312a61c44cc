"""What the gateway's command groups share: the error console, the config option and loading a
config (exit 2 naming each bad key). The cloud broker login options and the operational error exit
are in :mod:`bridge.cloud.cli_common` (the cloud-side commands use them too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import click

from gateway.config import GatewayConfig, Secrets, load_config
from gateway.errors import ConfigError


class _ErrConsole:
    """rich's stderr console, imported only when something is printed (not by ``run`` as a service)."""

    def print(self, *objects: Any, **options: Any) -> None:
        from rich.console import Console

        Console(stderr=True, soft_wrap=True).print(*objects, **options)


err_console = _ErrConsole()


def exit_invalid(exc: ConfigError) -> NoReturn:
    """Print each bad key of a config file and exit 2."""
    err_console.print(f"[red]invalid configuration[/red] in {exc.source}:", highlight=False)
    for key, reason in exc.problems:
        err_console.print(f"  {key}: {reason}", highlight=False, markup=False)
    raise SystemExit(2) from exc


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
