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

Every method that touches the disk blocks (fsync, reading a whole file back): the receiver calls
them through :func:`asyncio.to_thread`, one at a time, so this class needs no lock.
"""

from __future__ import annotations

import os
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
        return len(self._open)

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
                self._open.pop((gateway, assembly.id), None)

    def drop(self, gateway: str, assembly: Assembly) -> None:
        """Forget a transfer and delete its work files."""
        assembly.discard()
        self._open.pop((gateway, assembly.id), None)


def _checked(gateway: str) -> str:
    if not valid_id(gateway):  # the receiver checks first; this keeps a bad id from ever being a path
        raise ValueError(f"{gateway!r} is not a gateway id")
    return gateway
