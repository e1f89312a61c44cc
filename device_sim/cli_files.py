"""``device-sim send-file``: send a file to the gateway in chunks, as a device (see
:mod:`device_sim.file_upload`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from device_sim.cli_options import (
    broker_options,
    broker_settings,
    check_device_id,
    echo_summary,
    run_async,
    setup_logging,
    verbose_option,
)
from device_sim.errors import SimConfigError
from device_sim.file_upload import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, FileSender, LocalFile
from device_sim.publisher import Publisher
from device_sim.topics import is_valid_device_id


def _meta(_ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in value:
        key, eq, val = item.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE")
        out[key] = val
    return out


@click.command("send-file", short_help="Send a file to the gateway in chunks, as a device.")
@broker_options
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--device", required=True, callback=check_device_id, help="Device id, e.g. d1.")
@click.option("--file-id", default=None,
              help="The upload's id (1-64 of [A-Za-z0-9_.-]).  [default: the first 32 hex digits of the "
                   "file's SHA-256, so sending the same file again resumes it]")
@click.option("--chunk-bytes", type=click.IntRange(MIN_CHUNK_BYTES, MAX_CHUNK_BYTES), default=64 * 1024,
              show_default=True, help="Chunk size.")
@click.option("--name", default=None, help="The file's name at the gateway.  [default: PATH's name]")
@click.option("--content-type", default=None, help="e.g. image/jpeg.  [default: application/octet-stream]")
@click.option("--meta", multiple=True, callback=_meta, metavar="KEY=VALUE", help="Metadata (repeat).")
@click.option("--client-id", default=None, help="MQTT client id.  [default: the device id]")
@click.option("--answer-timeout", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="Seconds to wait for the gateway's answer before asking again (the manifest once more).")
@click.option("--timeout", type=click.FloatRange(0.1), default=600.0, show_default=True,
              help="Give up (exit 1) when the file is not complete after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@verbose_option
def send_file_command(**opts: Any) -> None:
    """Send PATH to the gateway as device --device: a manifest, then the chunks the gateway asks for
    (QoS 1), listening on the device's status topic. Exits 0 when the gateway says 'complete', 1
    when it says 'failed' (the reason is printed), the broker cannot be reached or --timeout passes.

    \b
    Examples:
      device-sim send-file snapshot.jpg --device cam-1 --content-type image/jpeg
      device-sim send-file logs.tar.gz --device d1 --meta kind=logs --chunk-bytes 16384 --json
    """
    setup_logging(opts.pop("verbose"))
    broker = broker_settings(opts)
    device, file_id = opts["device"], opts["file_id"]
    if file_id is not None and not is_valid_device_id(file_id):
        raise click.BadParameter(f"{file_id!r}: use 1-64 of [A-Za-z0-9_.-], not starting with '.' or '-'",
                                 param_hint="--file-id")
    try:
        local = LocalFile.describe(opts["path"], chunk_bytes=opts["chunk_bytes"], name=opts["name"], file_id=file_id,
                                   content_type=opts["content_type"], meta=opts["meta"])
    except SimConfigError as exc:
        raise click.BadParameter(str(exc), param_hint=exc.option) from exc
    sender = FileSender(local, device, answer_timeout_s=opts["answer_timeout"])
    client_id = opts["client_id"] or device

    async def go() -> dict[str, Any]:
        publisher = Publisher(broker, client_id, identity=device, subscriptions=[sender.topics["status"]],
                              on_message=sender.on_message)
        await publisher.connect()
        try:
            return (await sender.run(publisher, deadline_s=opts["timeout"])).summary(local)
        finally:
            await publisher.close()

    summary = run_async(go)
    echo_summary(summary, opts["as_json"], _text)
    if summary["state"] != "complete":
        raise SystemExit(1)


def _text(s: dict[str, Any]) -> str:
    reason = f" ({s['reason']})" if s["reason"] else ""
    return (f"{s['name']}: {s['state']}{reason}, {s['chunks_sent']} of {s['chunks']} chunks sent "
            f"({s['bytes_sent']} bytes), {s['manifests_sent']} manifest(s)")
