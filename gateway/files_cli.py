"""``edge-gateway files send`` and ``files list``: hand a file to the gateway's outbox, see the
uploads (docs/OPERATIONS.md, "File transfer").

``send`` copies the file into the outbox the way the outbox expects it: under a dot-name (which the
scanner ignores), synced, then renamed to its name, so the gateway never takes a half-written file.
Content type and metadata go in a ``.{name}.meta`` file written before the rename. It works whether
the gateway runs or not (the file waits in the outbox). ``list`` reads ``uploads.db``."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from bridge.protocol.files import FileRejected, check_name
from bridge.transfer.plan import check_extras
from gateway.atomic_file import atomic_write
from gateway.cli_common import CONFIG_OPTION, err_console, load_or_exit
from gateway.files.outbox import meta_path
from gateway.files.uploads import uploads_db_path
from gateway.files.uploads_db import FilesError, UploadsDb


def _fail(message: str, code: int) -> None:
    err_console.print(f"error: {message}", highlight=False, markup=False)
    raise SystemExit(code)


def _meta(pairs: tuple[str, ...]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"--meta {pair!r} is not KEY=VALUE", 2)
        meta[key] = value
    return meta


def _copy_in(src: Path, outbox: Path, name: str) -> Path:
    """Copy ``src`` to ``outbox/name``: a synced dot-named temporary file renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=outbox, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as f:
            shutil.copyfileobj(f, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        target = outbox / name
        os.link(tmp, target)  # fails if a file of that name already waits: never replaced
        os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(outbox, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return target


@click.command()
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False, exists=True, readable=True))
@click.option("--name", default=None, help="Name the receiver stores it under (default: the file's own name).")
@click.option("--content-type", default="application/octet-stream", show_default=True)
@click.option("--meta", "meta_pairs", multiple=True, metavar="KEY=VALUE", help="Metadata for the manifest; repeat.")
@CONFIG_OPTION
def send(path: Path, name: str | None, content_type: str, meta_pairs: tuple[str, ...],
         config_path: Path | None) -> None:
    """Queue PATH for upload: copy it into the gateway's outbox (atomically)."""
    cfg, _ = load_or_exit(config_path)
    try:
        name = check_name(path.name if name is None else name)
    except FileRejected as exc:
        _fail(f"bad name: {exc}", 2)
        return
    try:
        content_type, meta = check_extras(content_type, _meta(meta_pairs))
    except FileRejected as exc:
        _fail(f"bad --content-type or --meta: {exc}", 2)
        return
    size = path.stat().st_size
    if size > cfg.files.max_file_bytes:
        _fail(f"{path} has {size} bytes, files.max_file_bytes is {cfg.files.max_file_bytes}", 2)
    outbox = cfg.outbox_dir
    try:
        outbox.mkdir(parents=True, exist_ok=True)
        if (outbox / name).exists():
            _fail(f"{outbox / name} already waits in the outbox", 1)
        atomic_write(meta_path(outbox, name), json.dumps({"content_type": content_type, "meta": meta}).encode(),
                     0o644)
        target = _copy_in(path, outbox, name)
    except FileExistsError:
        meta_path(outbox, name).unlink(missing_ok=True)
        _fail(f"{outbox / name} already waits in the outbox", 1)
        return
    except OSError as exc:
        _fail(f"cannot copy {path} into {outbox}: {exc}", 1)
        return
    click.echo(f"queued {target} ({size} bytes)")


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _line(t: dict[str, Any]) -> str:
    progress = f" {t['acked']}/{t['chunks']} chunks" if "acked" in t else ""
    reason = f" ({t['reason']})" if t.get("reason") else ""
    return f"{t['id']}  {t['state']:<8} {_when(t['updated_ms'])}  {t['size']:>12}  {t['name']}{progress}{reason}"


@click.command("list")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the transfers as JSON.")
def list_transfers(config_path: Path | None, as_json: bool) -> None:
    """List the uploads under way and the last ones finished."""
    cfg, _ = load_or_exit(config_path)
    db = UploadsDb(uploads_db_path(cfg))
    try:
        db.open()
        transfers = db.listing()
    except FilesError as exc:
        _fail(str(exc), 1)
        return
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps(transfers, indent=2))
        return
    if not transfers:
        click.echo("no uploads")
    for t in transfers:
        click.echo(_line(t))
