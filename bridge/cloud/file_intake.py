"""The sink's files directory (``edge-gateway sink --files-dir DIR``): uploads being assembled and
the files installed from them.

Layout, per gateway id (an id by the one id grammar, so never a path): ``DIR/.incoming/{gateway}/``
is the :class:`~bridge.transfer.assembly.Assembly` work directory of that gateway's transfers under
way (``{id}.manifest``, ``{id}.part``, ``{id}.have``), ``DIR/{gateway}/`` holds its verified
files. The work directory lives inside ``DIR``, so installing is a rename on one file system.

Names: a file is installed under its manifest's name (checked by
:func:`~bridge.protocol.files.check_name`: one path component, never hidden). When that name is
taken, the new file is kept beside the old one as ``{stem}.{id[:8]}{suffix}`` (``report.txt`` ->
``report.1a2b3c4d.txt``), then ``{stem}.{id}{suffix}``, then ``{id}``: nothing is overwritten.

Expiry: the intake knows when each transfer last got a message (at start: when its work files last
changed); :meth:`FileIntake.idle` lists those idle longer than a limit, :meth:`FileIntake.drop`
deletes their work files, and the work directory of a gateway is removed once it is empty. Files
in ``.incoming`` that belong to no transfer (left by a crash before a manifest was written) are
deleted at start.

Every method that touches the disk blocks (fsync, reading a whole file back): the receiver calls
them through :func:`asyncio.to_thread`, one at a time, so this class needs no lock.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from bridge.protocol.files import Chunk, FileRejected, Manifest, check_name
from bridge.protocol.topics import valid_id
from bridge.transfer.assembly import Assembly

__all__ = ["FileIntake", "free_name"]

INCOMING = ".incoming"


def free_name(dest: Path, name: str, file_id: str) -> str:
    """The name to install ``name`` under in ``dest`` without replacing a file already there."""
    path = Path(name)
    stem, suffix = (path.stem, path.suffix) if path.suffix else (name, "")
    for candidate in (name, f"{stem}.{file_id[:8]}{suffix}", f"{stem}.{file_id}{suffix}", file_id):
        try:
            check_name(candidate)
        except FileRejected:  # the longer names may pass 255 bytes
            continue
        if not os.path.lexists(dest / candidate):
            return candidate
    n = 1
    while os.path.lexists(dest / f"{file_id}.{n}"):
        n += 1
    return f"{file_id}.{n}"


class FileIntake:
    """The transfers under way in ``root`` (see the module doc), by ``(gateway, file id)``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: dict[tuple[str, str], Assembly] = {}
        self._seen: dict[tuple[str, str], float] = {}  # when each transfer last got a message (time.time())

    def work_dir(self, gateway: str) -> Path:
        return self.root / INCOMING / _checked(gateway)

    def install_dir(self, gateway: str) -> Path:
        return self.root / _checked(gateway)

    def resume(self) -> int:
        """Load the transfers under way on disk (at start); how many there are."""
        incoming = self.root / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        for gateway_dir in sorted(incoming.iterdir()):
            if gateway_dir.is_dir() and valid_id(gateway_dir.name):
                for assembly in Assembly.under_way(gateway_dir):
                    self._open[(gateway_dir.name, assembly.id)] = assembly
                    self._seen[(gateway_dir.name, assembly.id)] = _last_change(gateway_dir, assembly.id)
                _clean(gateway_dir, {a for g, a in self._open if g == gateway_dir.name})
        return len(self._open)

    def touch(self, gateway: str, file_id: str) -> None:
        """A message of this transfer arrived: it is not idle."""
        if (gateway, file_id) in self._open:
            self._seen[(gateway, file_id)] = time.time()

    def idle(self, longer_than_s: float) -> list[tuple[str, Assembly]]:
        """The transfers under way that got no message for ``longer_than_s``."""
        cutoff = time.time() - longer_than_s
        return [(g, a) for (g, i), a in self._open.items() if self._seen.get((g, i), cutoff) < cutoff]

    def __len__(self) -> int:
        return len(self._open)

    def get(self, gateway: str, file_id: str) -> Assembly | None:
        return self._open.get((gateway, file_id))

    def under_way(self) -> list[tuple[str, Assembly]]:
        return [(gateway, assembly) for (gateway, _), assembly in self._open.items()]

    def open(self, gateway: str, manifest: Manifest) -> Assembly:
        """Start (or resume) receiving ``manifest``'s file; ``FileRejected("conflict")`` for a
        different manifest under an id already under way."""
        assembly = Assembly.open(self.work_dir(gateway), manifest)
        self._open[(gateway, manifest.id)] = assembly
        self._seen[(gateway, manifest.id)] = time.time()
        return assembly

    def knows(self, gateway: str, file_id: str) -> bool:
        """Whether ``file_id`` is under way here (opened before, or found on disk at start)."""
        return (gateway, file_id) in self._open

    def write(self, assembly: Assembly, chunk: Chunk) -> bool:
        """Write a chunk (synced before it is marked); False for one already here."""
        return assembly.write(chunk)

    def install(self, gateway: str, assembly: Assembly) -> Path:
        """Verify the whole file and install it under a free name (``FileRejected("hash_mismatch")``:
        the transfer is dropped). Returns the installed path."""
        dest = self.install_dir(gateway)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            return assembly.install(dest, free_name(dest, assembly.manifest.name, assembly.id))
        except FileRejected:
            self.drop(gateway, assembly)
            raise
        finally:
            if not (self.work_dir(gateway) / f"{assembly.id}.manifest").exists():
                self._forget(gateway, assembly.id)

    def drop(self, gateway: str, assembly: Assembly, *, prune: bool = False) -> None:
        """Forget a transfer and delete its work files; with ``prune`` (a transfer given up: expired,
        or failed by its sender) also its gateway's work directory once no transfer is left in it."""
        assembly.discard()
        self._forget(gateway, assembly.id)
        if prune and not any(g == gateway for g, _ in self._open):
            with contextlib.suppress(OSError):  # not empty after all, or gone
                self.work_dir(gateway).rmdir()

    def _forget(self, gateway: str, file_id: str) -> None:
        self._open.pop((gateway, file_id), None)
        self._seen.pop((gateway, file_id), None)


def _last_change(work_dir: Path, file_id: str) -> float:
    times = [0.0]
    for part in ("manifest", "have"):
        with contextlib.suppress(OSError):
            times.append((work_dir / f"{file_id}.{part}").stat().st_mtime)
    return max(times)


def _clean(work_dir: Path, under_way: set[str]) -> None:
    """Delete the files of ``work_dir`` that belong to no transfer under way, then the directory if empty."""
    for path in work_dir.iterdir():
        if path.is_file() and path.name.split(".", 1)[0] not in under_way:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        work_dir.rmdir()


def _checked(gateway: str) -> str:
    if not valid_id(gateway):  # the receiver checks first; this keeps a bad id from ever being a path
        raise ValueError(f"{gateway!r} is not a gateway id")
    return gateway
