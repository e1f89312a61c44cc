"""Where a verified device file goes: straight to the uploads (:meth:`Outbox.take`, with its name,
content type, metadata and device), or, with uploads off, into the outbox as ``{device}-{name}``
(the device's id keeps two devices' files of one name apart; ``-2``, ``-3`` ... when that name is
taken). The integration point is the ``on_file`` callback of
:class:`gateway.files.device_receiver.DeviceReceiver`: it raises when the file was not taken, so
the device is told and nothing is deleted as if it had been handed on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bridge.protocol.files import FileRejected, check_name
from gateway.files.device_receiver import OnFile
from gateway.files.outbox import Outbox
from gateway.files.uploads_db import FilesError

__all__ = ["into_outbox", "into_uploads"]

HANDOFF_TIMEOUT_S = 30.0


def into_uploads(outbox: Outbox, loop: Callable[[], asyncio.AbstractEventLoop | None]) -> OnFile:
    """An ``on_file`` that queues each file for upload with everything the device said about it.
    It runs in the device intake's worker thread: the file is planned (hashed) there, then queued
    on the event loop (``loop()``, the gateway's), which owns the upload state. A refusal
    (``FileRejected``) reaches the device; a file not taken now raises ``OSError``."""

    def on_file(path: Path, name: str, content_type: str, meta: Mapping[str, Any], device: str) -> None:
        manifest = outbox.plan(path, name, content_type, dict(meta), device)
        running = loop()
        if running is None:
            raise OSError(errno.EAGAIN, "the uploads are not running")

        async def queue() -> None:
            outbox.queue(path, manifest)

        try:
            asyncio.run_coroutine_threadsafe(queue(), running).result(HANDOFF_TIMEOUT_S)
        except FilesError as exc:
            raise OSError(errno.EIO, f"the upload state refused it: {exc}") from exc
        except concurrent.futures.TimeoutError:
            raise OSError(errno.ETIMEDOUT, "the event loop did not take the file in time") from None

    return on_file


def into_outbox(outbox: Path) -> OnFile:
    """An ``on_file`` that moves each file into ``outbox`` atomically (a rename; across file
    systems a copy to a dot-name first, which the outbox scan ignores, then a rename)."""

    def on_file(path: Path, name: str, _content_type: str, _meta: Mapping[str, Any], device: str) -> None:
        outbox.mkdir(parents=True, exist_ok=True)
        target = _free_name(outbox, f"{device}-{name}")
        try:
            os.replace(path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            tmp = outbox / f".{target.name}.tmp"
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)

    return on_file


def _free_name(outbox: Path, name: str) -> Path:
    try:
        check_name(name)
    except FileRejected:  # a long device id plus a long name: cut (on a UTF-8 boundary), never refused
        name = name.encode()[:240].decode(errors="ignore").rstrip()
    stem, dot, ext = name.partition(".")
    n, candidate = 1, outbox / name
    while candidate.exists():
        n += 1
        candidate = outbox / f"{stem}-{n}{dot}{ext}"
    return candidate
