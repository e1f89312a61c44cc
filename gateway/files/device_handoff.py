"""Where a verified device file goes: straight to the uploads (:meth:`Outbox.take`, with its name,
content type, metadata and device). The integration point is the ``on_file`` callback of
:class:`gateway.files.device_receiver.DeviceReceiver`: it raises when the file was not taken, so
the device is told and nothing is deleted as if it had been handed on. With file transfer off
device uploads are off too (:func:`no_uploads` refuses, should one arrive)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gateway.files.device_receiver import OnFile
from gateway.files.outbox import Outbox
from gateway.files.uploads_db import FilesError

__all__ = ["into_uploads", "no_uploads"]

HANDOFF_TIMEOUT_S = 30.0


def into_uploads(outbox: Outbox, loop: Callable[[], asyncio.AbstractEventLoop | None],
                 timeout_s: float = HANDOFF_TIMEOUT_S) -> OnFile:
    """An ``on_file`` that queues each file for upload with everything the device said about it.
    It runs in the device intake's worker thread: the file is planned (hashed) there, then queued
    on the event loop (``loop()``, the gateway's), which owns the upload state. A refusal
    (``FileRejected``) reaches the device; a file not taken now raises ``OSError``. When the loop
    does not take it within ``timeout_s`` the hand-off is called off for good (the device is told
    it failed, so the file must not be queued later either)."""

    def on_file(path: Path, name: str, content_type: str, meta: Mapping[str, Any], device: str) -> None:
        manifest = outbox.plan(path, name, content_type, dict(meta), device)
        running = loop()
        if running is None:
            raise OSError(errno.EAGAIN, "the uploads are not running")
        lock, state = threading.Lock(), {"queued": False, "abandoned": False}

        async def queue() -> None:
            with lock:
                if not state["abandoned"]:
                    outbox.queue(path, manifest)
                    state["queued"] = True

        fut = asyncio.run_coroutine_threadsafe(queue(), running)
        try:
            fut.result(timeout_s)
        except FilesError as exc:
            raise OSError(errno.EIO, f"the upload state refused it: {exc}") from exc
        except concurrent.futures.TimeoutError:
            with lock:
                if state["queued"]:
                    return  # taken just now
                state["abandoned"] = True
            fut.cancel()
            raise OSError(errno.ETIMEDOUT, "the event loop did not take the file in time") from None

    return on_file


def no_uploads(_path: Path, _name: str, _content_type: str, _meta: Mapping[str, Any], _device: str) -> None:
    """The ``on_file`` while file transfer is off: nothing takes device files."""
    raise OSError(errno.EAGAIN, "file transfer is disabled ([files] enabled = false)")
