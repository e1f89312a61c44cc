"""Where a verified device file goes until the outbox uploader takes device files with their
metadata: into the outbox, as ``{device}-{name}`` (the device's id keeps two devices' files of
one name apart; ``-2``, ``-3`` ... when that name is taken). The integration point is the
``on_file`` callback of :class:`gateway.files.device_receiver.DeviceReceiver`."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridge.protocol.files import FileRejected, check_name
from gateway.files.device_receiver import OnFile

__all__ = ["into_outbox"]


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
