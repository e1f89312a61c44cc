"""Replacing a file atomically: readers see the old content or the new, never a mix, and a crash
leaves one of the two."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, mode: int, *, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically. A new file gets ``mode``; an existing one keeps its
    mode, owner and group (e.g. the group an external mosquitto reads the password file through).
    ``sync=False`` skips the fsync, for files rewritten often whose loss in a power cut is harmless
    (it spares an SD card)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old: os.stat_result | None = path.stat()
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if old is not None:
            mode = stat.S_IMODE(old.st_mode)
            with contextlib.suppress(PermissionError):  # only root may give a file away
                os.fchown(fd, old.st_uid, old.st_gid)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
