"""A device upload on disk, while its chunks come in: the same durability rules as
:class:`bridge.transfer.assembly.Assembly`, for a manifest that lists no per-chunk hashes.

One upload lives in its device's directory (``{files_dir}/devices/{device}/``) as files named by
the device's file id: ``<id>.json`` (the manifest as accepted; written last, its presence means
"under way"), ``<id>.part`` (the data, each chunk at its offset) and ``<id>.have`` (one byte per
chunk, set once that chunk's data is synced). A chunk is marked only after its data is synced,
so after a crash the marks never claim more than the disk holds. :meth:`DeviceUpload.verify`
reads the whole file back and checks its SHA-256 before it is renamed to ``<id>.file`` and handed
on; a partial or corrupt file is never handed on. After the hand-off, ``<id>.done`` remembers the
file (its manifest) so that a device asking again is told ``complete``.

Why not :class:`Assembly` itself: it checks each chunk against the hash the manifest lists and
keeps the cloud protocol's manifest (32-hex id, per-chunk hashes) on disk. A device sends neither,
and placeholder hashes would put a lie on disk. The rules are the same (and the synced writes are
Assembly's own): data synced before its mark, the manifest written last, the whole checked before
it is handed on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from bridge.protocol.files import BAD_CHUNK, HASH_MISMATCH, FileRejected, canonical_json
from bridge.transfer.assembly import fsync_dir, write_synced
from gateway.files.device_contract import DeviceManifest, decode_device_manifest

__all__ = ["DeviceUpload", "bytes_under", "done_manifest", "forget_done", "mark_done"]

_PARTS = ("json", "part", "have", "file")


def _paths(work_dir: Path, file_id: str) -> dict[str, Path]:
    return {part: work_dir / f"{file_id}.{part}" for part in (*_PARTS, "done")}


def _pwrite_synced(path: Path, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _manifest_bytes(manifest: DeviceManifest) -> bytes:
    return canonical_json(manifest.to_json())


class DeviceUpload:
    """One device file being received into ``work_dir`` (see the module doc)."""

    def __init__(self, work_dir: Path, file_id: str, manifest: DeviceManifest, have: bytearray) -> None:
        self.work_dir, self.file_id, self.manifest = work_dir, file_id, manifest
        self._have = have

    @classmethod
    def open(cls, work_dir: Path, file_id: str, manifest: DeviceManifest) -> DeviceUpload:
        """Start receiving a new file (whatever was under way under ``file_id`` is replaced)."""
        work_dir.mkdir(parents=True, exist_ok=True)
        cls.remove(work_dir, file_id)
        paths = _paths(work_dir, file_id)
        with open(paths["part"], "wb") as f:
            f.truncate(manifest.size)  # sparse: disk blocks are taken as chunks arrive
        write_synced(paths["have"], bytes(manifest.chunks))
        write_synced(paths["json"], _manifest_bytes(manifest))  # last: its presence means "under way"
        fsync_dir(work_dir)
        return cls(work_dir, file_id, manifest, bytearray(manifest.chunks))

    @classmethod
    def load(cls, work_dir: Path, file_id: str) -> DeviceUpload | None:
        """The upload of ``file_id`` under way in ``work_dir``, or None."""
        paths = _paths(work_dir, file_id)
        try:
            manifest = decode_device_manifest(paths["json"].read_bytes(), 2**62)
            have = bytearray(paths["have"].read_bytes())
        except FileNotFoundError:
            return None
        except FileRejected:  # torn by a crash while it was written: start over
            cls.remove(work_dir, file_id)
            return None
        if len(have) != manifest.chunks or not paths["part"].exists():
            paths["file"].unlink(missing_ok=True)  # a hand-off cut short: the device sends it again
            have = bytearray(manifest.chunks)
            with open(paths["part"], "wb") as f:
                f.truncate(manifest.size)
            write_synced(paths["have"], bytes(have))
        return cls(work_dir, file_id, manifest, have)

    @staticmethod
    def under_way(work_dir: Path) -> list[str]:
        """The file ids with an upload under way in ``work_dir``."""
        return sorted(p.stem for p in work_dir.glob("*.json")) if work_dir.is_dir() else []

    @staticmethod
    def remove(work_dir: Path, file_id: str) -> None:
        for part in _PARTS:
            with contextlib.suppress(FileNotFoundError):
                _paths(work_dir, file_id)[part].unlink()

    @property
    def part_path(self) -> Path:
        return _paths(self.work_dir, self.file_id)["part"]

    def missing(self) -> list[int]:
        return [i for i, got in enumerate(self._have) if not got]

    @property
    def complete(self) -> bool:
        return all(self._have)

    def write(self, index: int, data: bytes) -> bool:
        """Write chunk ``index`` (``FileRejected("bad_chunk")`` when it does not fit the manifest).
        False when it was already here (a duplicate: nothing is written)."""
        m = self.manifest
        if not 0 <= index < m.chunks or len(data) != m.chunk_length(index):
            raise FileRejected(BAD_CHUNK, f"chunk {index} of {len(data)} bytes does not fit {m.chunks} chunks "
                                          f"of {m.chunk_size} bytes ({m.size} in all)")
        if self._have[index]:
            return False
        paths = _paths(self.work_dir, self.file_id)
        _pwrite_synced(paths["part"], data, index * m.chunk_size)
        _pwrite_synced(paths["have"], b"\x01", index)
        self._have[index] = 1
        return True

    def verify(self) -> Path:
        """Check the whole file against the manifest's SHA-256 and rename it to ``<id>.file``
        (returned). A mismatch discards the upload and raises ``FileRejected("hash_mismatch")``."""
        paths = _paths(self.work_dir, self.file_id)
        digest = hashlib.sha256()
        with paths["part"].open("rb") as f:
            while block := f.read(1024 * 1024):
                digest.update(block)
            os.fsync(f.fileno())
        if digest.hexdigest() != self.manifest.sha256:
            self.remove(self.work_dir, self.file_id)
            raise FileRejected(HASH_MISMATCH, f"{self.manifest.name!r} does not match its SHA-256 as a whole")
        os.replace(paths["part"], paths["file"])
        return paths["file"]


def mark_done(work_dir: Path, file_id: str, manifest: DeviceManifest) -> None:
    """Remember a file handed on (so a device asking again is told ``complete``), and forget its upload."""
    write_synced(_paths(work_dir, file_id)["done"], _manifest_bytes(manifest))
    DeviceUpload.remove(work_dir, file_id)
    fsync_dir(work_dir)


def done_manifest(work_dir: Path, file_id: str) -> DeviceManifest | None:
    """The manifest of a file handed on under ``file_id``, or None."""
    try:
        return decode_device_manifest(_paths(work_dir, file_id)["done"].read_bytes(), 2**62)
    except (FileNotFoundError, FileRejected):
        return None


def forget_done(work_dir: Path, file_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _paths(work_dir, file_id)["done"].unlink()


def bytes_under(root: Path) -> int:
    """The bytes of every file under ``root`` (a part file counts its full size from the start:
    the space an upload will take is reserved when it opens)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total
