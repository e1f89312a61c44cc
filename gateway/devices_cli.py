"""``edge-gateway devices``: provision device identities (passwords and certificates) for the
embedded broker. Changes take effect in a running gateway within ``auth.reload_interval_s`` (or at
once on SIGHUP); a removed device is disconnected."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from bridge.protocol.topics import ID_RULE, valid_id
from gateway.cli_common import CONFIG_OPTION, err_console, load_or_exit
from gateway.errors import CredentialsError
from gateway.source.passwords import (
    DEFAULT_ITERATIONS,
    GENERATED_ITERATIONS,
    generate_password,
    hash_password,
    provision,
    read_password_file,
    write_password_file,
)
from gateway.source.pki import Pki


@dataclass(frozen=True)
class Paths:
    password_file: Path
    pki: Pki


def _device_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not valid_id(value):
        raise click.BadParameter(f"{value[:64]!r} must be {ID_RULE} (it becomes a topic level)")
    return value


DEVICE_ID = click.argument("device_id", callback=_device_id)


@click.group()
@CONFIG_OPTION
@click.option("--password-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Password file (default: local_broker.auth.password_file of the config).")
@click.option("--pki-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Certificate directory (default: local_broker.auth.pki_dir of the config).")
@click.pass_context
def devices(ctx: click.Context, config_path: Path | None, password_file: Path | None, pki_dir: Path | None) -> None:
    """Add, remove and list devices allowed on the embedded broker; issue device certificates."""
    cfg, _secrets = load_or_exit(config_path)
    ctx.obj = Paths(password_file or cfg.password_file, Pki(pki_dir or cfg.pki_dir))


def _fail(exc: CredentialsError) -> None:
    err_console.print(f"[red]error:[/red] {exc}", highlight=False, markup=False)
    raise SystemExit(2) from exc


@devices.command()
@DEVICE_ID
@click.option("--generate", is_flag=True, help="Make a random password and print it (once).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--iterations", type=click.IntRange(1000, 10_000_000), default=None,
              help=f"PBKDF2-SHA512 iterations (default: {GENERATED_ITERATIONS} for a generated password, "
                   f"{DEFAULT_ITERATIONS} for a typed one).")
@click.pass_obj
def add(paths: Paths, device_id: str, generate: bool, password_stdin: bool, iterations: int | None) -> None:
    """Add DEVICE_ID with a password, or change its password."""
    if generate == password_stdin:
        raise click.UsageError("give exactly one of --generate or --password-stdin")
    password = generate_password() if generate else sys.stdin.readline().rstrip("\r\n")
    iterations = iterations or (GENERATED_ITERATIONS if generate else DEFAULT_ITERATIONS)
    if not password:
        raise click.UsageError("the password is empty")
    try:
        entries = read_password_file(paths.password_file)
        existed = device_id in entries
        entries[device_id] = hash_password(password, iterations)
        write_password_file(paths.password_file, entries)
    except CredentialsError as exc:
        _fail(exc)
    if generate:
        click.echo(password)
    err_console.print(f"{'changed' if existed else 'added'} {device_id} in {paths.password_file}", highlight=False)


@devices.command()
@DEVICE_ID
@click.pass_obj
def remove(paths: Paths, device_id: str) -> None:
    """Remove DEVICE_ID's password and revoke its certificates; a running gateway disconnects it."""
    try:
        entries = read_password_file(paths.password_file)
        had_password = entries.pop(device_id, None) is not None
        if had_password:
            write_password_file(paths.password_file, entries)
        serials = paths.pki.revoke_device(device_id)
    except CredentialsError as exc:
        _fail(exc)
    if not had_password and not serials:
        err_console.print(f"[red]error:[/red] no password or unrevoked certificate for {device_id}", highlight=False)
        raise SystemExit(1)
    err_console.print(f"removed {device_id}" + (f"; revoked certificate(s) {', '.join(serials)}" if serials else ""),
                      highlight=False)


@devices.command("list")
@click.pass_obj
def list_devices(paths: Paths) -> None:
    """Devices with a password or a certificate (revoked ones marked)."""
    try:
        entries = read_password_file(paths.password_file)
        issued = paths.pki.issued()
        revoked = {serial for serial, _who in paths.pki.revoked_list()}
    except CredentialsError as exc:
        _fail(exc)
    certs: dict[str, list[str]] = {}
    for serial, who in issued:
        certs.setdefault(who, []).append(serial + (" (revoked)" if serial in revoked else ""))
    for device in sorted(set(entries) | set(certs)):
        parts = (["password"] if device in entries else []) + [f"cert {c}" for c in certs.get(device, [])]
        click.echo(f"{device}\t{', '.join(parts)}")


@devices.command()
@DEVICE_ID
@click.option("--days", type=click.IntRange(1, 36500), default=825, show_default=True, help="Validity.")
@click.option("--server-name", "server_names", multiple=True,
              help="DNS name or IP address for the broker's own certificate, made with the CA on first use "
                   "(repeatable; default: this host's name, localhost, 127.0.0.1).")
@click.pass_obj
def cert(paths: Paths, device_id: str, days: int, server_names: tuple[str, ...]) -> None:
    """Issue a client certificate for DEVICE_ID (CN = DEVICE_ID) from the gateway's CA; the CA and
    the broker's server certificate are created on first use."""
    try:
        paths.pki.ensure_ca()
        paths.pki.ensure_server_cert(server_names)
        issued = paths.pki.issue_device(device_id, days=days)
    except CredentialsError as exc:
        _fail(exc)
    click.echo(f"certificate: {issued.cert_file}\nkey:         {issued.key_file}\nca:          {paths.pki.ca_file}")
    err_console.print(f"serial {issued.serial}; copy the key to the device over a trusted channel", highlight=False)


@devices.command("provision")
@click.argument("device_ids", nargs=-1, required=True, callback=lambda c, p, v: [_device_id(c, p, d) for d in v])
@click.option("--credentials-out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the plain 'id:password' lines (for device-sim --password-file).")
@click.pass_obj
def provision_cmd(paths: Paths, device_ids: list[str], credentials_out: Path) -> None:
    """Give each DEVICE_ID a random password at once (a lab or a batch of new devices)."""
    try:
        provision(paths.password_file, credentials_out, device_ids)
    except CredentialsError as exc:
        _fail(exc)
    err_console.print(f"{len(device_ids)} devices in {paths.password_file}; passwords in {credentials_out}",
                      highlight=False)
