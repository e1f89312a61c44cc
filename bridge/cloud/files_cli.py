"""``edge-gateway files push``: send a file down to a gateway (:mod:`bridge.cloud.files_push`).

Exit codes: 0 when the gateway answered ``received``, 1 when it answered ``failed``, when no answer
came within ``--timeout-s`` or the cloud broker could not be used, 2 for bad arguments (a file
name the gateway would refuse, a file larger than the protocol allows, a bad gateway id...).

``push`` is a command of the ``files`` group of ``edge-gateway`` (:mod:`gateway.cli`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Literal

import click

from bridge.cloud.cli_common import PREFIX_HELP, err_console, exit_failed, login_options, operator_topics
from bridge.cloud.files_push import PushOutcome, push_file
from bridge.mqtt.errors import BridgeError
from bridge.mqtt.types import ClientSettings, Login
from bridge.protocol.file_topics import FileTopics
from bridge.protocol.files import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, FileRejected
from bridge.protocol.topics import DEFAULT_PREFIX, ID_RULE, valid_id
from bridge.transfer.plan import plan_file

__all__ = ["push"]


@click.command("push")
@click.option("--url", required=True, help="Cloud broker, e.g. mqtt://127.0.0.1:1883 or mqtts://host.")
@click.option("--gateway", "gateway_id", required=True, help="Id of the gateway to send the file to.")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--device", default=None, help="Install under inbox/DEVICE/ on the gateway (a device id).")
@click.option("--name", default=None, help="Name to install the file under (default: the file's own name).")
@click.option("--chunk-bytes", type=click.IntRange(MIN_CHUNK_BYTES, MAX_CHUNK_BYTES), default=DEFAULT_CHUNK_BYTES,
              show_default=True, help="Bytes per chunk.")
@click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="Give up (exit 1) when the gateway has not answered received/failed by then.")
@click.option("--window", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Chunks sent and not yet confirmed by the gateway, at most (a command from the cloud waits "
                   "behind at most these). The gateway confirms every 4 chunks, or after 0.5 s without one: "
                   "below 4, a window goes at most every 0.5 s.")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help=PREFIX_HELP)
@click.option("--protocol", type=click.Choice(["5", "3.1.1"]), default="5", show_default=True,
              help="MQTT version to speak to the cloud broker.")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's answer and the counts as JSON.")
@login_options
def push(url: str, gateway_id: str, file: Path, device: str | None, name: str | None, chunk_bytes: int,
         timeout_s: float, window: int, prefix: str, protocol: Literal["5", "3.1.1"], as_json: bool,
         login: Login) -> None:
    """Send FILE down to a gateway, in chunks, and wait until it is installed in the gateway's inbox.

    Keep it running until it exits: a gateway that is offline or restarts asks for what it misses
    when it is back, and this command sends it."""
    topics = operator_topics(url, gateway_id, prefix)
    if device is not None and not valid_id(device):
        raise click.BadParameter(f"{device[:64]!r} is not a device id ({ID_RULE})", param_hint="--device")
    try:
        manifest = plan_file(file, chunk_size=chunk_bytes, name=name, device=device)
    except FileRejected as exc:
        raise click.BadParameter(str(exc), param_hint="FILE" if name is None else "--name") from exc
    except OSError as exc:
        raise click.BadParameter(f"cannot read {file}: {exc.strerror}", param_hint="FILE") from exc
    settings = ClientSettings(client_id=f"edge-push-{uuid.uuid4().hex[:12]}", protocol=protocol,
                              username=login.username, password=login.password, tls=login.tls,
                              max_inflight=max(window, 20), connect_timeout_s=min(timeout_s, 10.0))
    try:
        outcome = asyncio.run(push_file(url, settings, FileTopics(topics.prefix), file, manifest, window=window,
                                        timeout_s=timeout_s))
    except FileRejected as exc:
        exit_failed(exc, "the file changed while it was sent")
    except BridgeError as exc:
        exit_failed(exc, "check --url and that the broker is running and accepts this client")
    show_outcome(outcome, manifest.id, as_json)


def show_outcome(outcome: PushOutcome, file_id: str, as_json: bool) -> None:
    """Print how the push ended; exit 1 unless the gateway answered ``received``."""
    counts = {"manifests": outcome.manifests, "chunks": outcome.chunks, "resent": outcome.resent,
              "missing_heard": outcome.missing_heard}
    if as_json:
        click.echo(json.dumps({"id": file_id, "state": outcome.state, "status": outcome.status, **counts}))
    else:
        from rich.console import Console
        from rich.markup import escape

        s = outcome.status
        sent = f"{outcome.chunks} chunks, {outcome.resent} resent, {outcome.manifests} manifest(s)"
        if outcome.state == "received":
            Console(soft_wrap=True, highlight=False).print(
                f"[green]received[/green] {file_id}: {escape(str(s.get('path')))} ({s.get('size')} bytes, "
                f"sha256 {s.get('sha256')}); {sent}")
        elif outcome.state == "failed":
            err_console.print(f"[red]failed[/red] {file_id}: {escape(str(s.get('reason')))}; {sent}", highlight=False)
        else:
            err_console.print(f"[red]no answer[/red] {file_id}: neither received nor failed in time; {sent}",
                              highlight=False)
    if outcome.state != "received":
        raise SystemExit(1)

