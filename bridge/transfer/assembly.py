"""The receiving side's view of a file: chunks written at their offsets, progress on disk, the
whole verified before it is installed.

One file being received lives in a work directory as three files named by its id:
``<id>.manifest`` (the manifest as received), ``<id>.part`` (the data, each chunk at its offset) and
``<id>.have`` (one byte per chunk: 1 once that chunk's data is on disk and synced). A chunk is
marked only after its data is synced, so after a crash the marks never claim more than the disk
holds; a chunk written but not yet marked is simply asked for again. :meth:`Assembly.install`
reads the whole file back, checks its SHA-256, syncs it and renames it into place: a partial or
corrupt file is never presented under its name.

Just before that rename, ``<id>.target`` records where the file goes. A crash after the rename but
before the work files are removed leaves ``.manifest``, ``.have`` (every chunk marked) and
``.target`` without ``.part``: that transfer is installed, not under way. :meth:`Assembly.finished`
lists such leftovers (:class:`Finished`: the manifest and the installed path) so a receiver records
them as installed, then removes them with :meth:`Assembly.remove`; :meth:`Assembly.under_way` and
:meth:`Assembly.load` skip them (they are never started over).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bridge.protocol.files import (
    CONFLICT,
    HASH_MISMATCH,
    Chunk,
    FileRejected,
    Manifest,
    check_chunk,
    check_name,
    decode_manifest,
    encode_manifest,
)

__all__ = ["Assembly", "Finished", "fsync_dir"]


@dataclass(frozen=True)
class Finished:
    """A transfer installed at ``path`` before a crash left its work files behind (see the module doc)."""

    manifest: Manifest
    path: Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Assembly:
    """One file being received into ``work_dir`` (see the module doc)."""

    def __init__(self, work_dir: Path, manifest: Manifest, have: bytearray) -> None:
        self.work_dir = work_dir
        self.manifest = manifest
        self._have = have

    # -- opening ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, work_dir: Path, manifest: Manifest) -> Assembly:
        """Start receiving ``manifest``'s file, or resume it when it is already under way. A
        different manifest under the same id raises ``FileRejected("conflict")``."""
        work_dir.mkdir(parents=True, exist_ok=True)
        if cls._finished(work_dir, manifest.id) is not None:  # installed, not recorded by the caller: anew
            cls.remove(work_dir, manifest.id)
        known = cls.load(work_dir, manifest.id)
        if known is not None:
            if known.manifest.to_json() | {"created_ms": 0} != manifest.to_json() | {"created_ms": 0}:
                raise FileRejected(CONFLICT, f"file {manifest.id} is already being received with another manifest")
            return known
        paths = _paths(work_dir, manifest.id)
        with open(paths["part"], "wb") as f:
            f.truncate(manifest.size)  # sparse: disk blocks are taken as chunks arrive
        _write_synced(paths["have"], bytes(manifest.chunks))
        _write_synced(paths["manifest"], encode_manifest(manifest))  # last: its presence means "under way"
        fsync_dir(work_dir)
        return cls(work_dir, manifest, bytearray(manifest.chunks))

    @classmethod
    def load(cls, work_dir: Path, file_id: str) -> Assembly | None:
        """The transfer of ``file_id`` under way in ``work_dir``, or None (also for one already
        installed: :meth:`finished`)."""
        paths = _paths(work_dir, file_id)
        if cls._finished(work_dir, file_id) is not None:
            return None
        try:
            manifest = decode_manifest(paths["manifest"].read_bytes())
            have = bytearray(paths["have"].read_bytes())
        except FileNotFoundError:
            return None
        except FileRejected:  # a torn manifest (crash while it was written): start over
            cls.remove(work_dir, file_id)
            return None
        if manifest.id != file_id:  # not this file's manifest (renamed by hand): start over
            cls.remove(work_dir, file_id)
            return None
        if len(have) != manifest.chunks or not paths["part"].exists():
            have = bytearray(manifest.chunks)
            with open(paths["part"], "wb") as f:  # a crash before the .part reached the disk: a new one
                f.truncate(manifest.size)
            _write_synced(paths["have"], bytes(have))
        return cls(work_dir, manifest, have)

    @classmethod
    def under_way(cls, work_dir: Path) -> Iterator[Assembly]:
        """Every transfer under way in ``work_dir`` (after a restart)."""
        if not work_dir.is_dir():
            return
        for path in sorted(work_dir.glob("*.manifest")):
            found = cls.load(work_dir, path.stem)
            if found is not None:
                yield found

    @classmethod
    def finished(cls, work_dir: Path) -> list[Finished]:
        """The transfers in ``work_dir`` installed before a crash that left their work files (see
        the module doc): record each as installed, then :meth:`remove` it."""
        if not work_dir.is_dir():
            return []
        found = (cls._finished(work_dir, path.stem) for path in sorted(work_dir.glob("*.target")))
        return [f for f in found if f is not None]

    @staticmethod
    def _finished(work_dir: Path, file_id: str) -> Finished | None:
        paths = _paths(work_dir, file_id)
        if paths["part"].exists():  # still there: the rename did not happen (or did not last)
            return None
        try:
            target = Path(paths["target"].read_text(encoding="utf-8"))
            manifest = decode_manifest(paths["manifest"].read_bytes())
            have = paths["have"].read_bytes()
        except (OSError, ValueError, FileRejected):  # missing or torn: not a finished transfer
            return None
        if manifest.id != file_id or len(have) != manifest.chunks or not all(have):
            return None
        return Finished(manifest, target)

    @staticmethod
    def remove(work_dir: Path, file_id: str) -> None:
        for path in _paths(work_dir, file_id).values():
            for each in (path, path.with_name(path.name + ".tmp")):  # .tmp: left by a crash in _write_synced
                with contextlib.suppress(FileNotFoundError):
                    each.unlink()

    # -- receiving --------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.manifest.id

    def has(self, index: int) -> bool:
        return bool(self._have[index])

    def missing(self) -> list[int]:
        return [i for i, got in enumerate(self._have) if not got]

    @property
    def received(self) -> int:
        return sum(self._have)

    def updated_at(self) -> float:
        """When the transfer last changed: opened or a chunk written (wall clock, read from the disk,
        so it survives restarts; for expiring abandoned transfers). Raises ``OSError``."""
        return os.stat(_paths(self.work_dir, self.id)["have"]).st_mtime

    @property
    def complete(self) -> bool:
        return all(self._have)

    def write(self, chunk: Chunk) -> bool:
        """Write ``chunk`` (checked against the manifest first: ``FileRejected``). False when it was
        already here (a duplicate: nothing is written)."""
        check_chunk(self.manifest, chunk)
        if self._have[chunk.index]:
            return False
        paths = _paths(self.work_dir, self.id)
        fd = os.open(paths["part"], os.O_WRONLY)
        try:
            os.pwrite(fd, chunk.data, chunk.offset)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        fd = os.open(paths["have"], os.O_WRONLY)
        try:
            os.pwrite(fd, b"\x01", chunk.index)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self._have[chunk.index] = 1
        return True

    def install(self, dest: Path, name: str | None = None) -> Path:
        """Verify the whole file and move it to ``dest/<name>`` (the manifest's name by default),
        replacing a file of that name atomically. A whole that does not match raises
        ``FileRejected("hash_mismatch")`` and forgets every chunk (they are all asked for again)."""
        name = check_name(self.manifest.name if name is None else name)
        if not self.complete:
            raise ValueError(f"{self.id} still misses {len(self.missing())} chunks: nothing to install")
        part = _paths(self.work_dir, self.id)["part"]
        digest = hashlib.sha256()
        with part.open("rb") as f:
            while block := f.read(1024 * 1024):
                digest.update(block)
            os.fsync(f.fileno())
        if digest.hexdigest() != self.manifest.sha256:
            self._have = bytearray(self.manifest.chunks)
            _write_synced(_paths(self.work_dir, self.id)["have"], bytes(self._have))
            raise FileRejected(HASH_MISMATCH, f"{self.manifest.name!r} does not match its SHA-256 as a whole")
        _make_dirs(dest)
        target = dest / name
        _write_synced(_paths(self.work_dir, self.id)["target"], str(target.absolute()).encode())
        try:
            os.replace(part, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self._copy_into(part, target)  # dest is on another file system (files.inbox_dir elsewhere)
        fsync_dir(dest)
        self.remove(self.work_dir, self.id)  # the .manifest first: without it nothing is under way or finished
        fsync_dir(self.work_dir)
        return target

    def _copy_into(self, part: Path, target: Path) -> None:
        """Copy ``part`` beside ``target`` (a dot name, so scanners skip it), sync it, rename it into place."""
        tmp = target.with_name(f".{self.id}.part")
        with part.open("rb") as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        part.unlink()

    def discard(self) -> None:
        self.remove(self.work_dir, self.id)


def _make_dirs(path: Path) -> None:
    """``mkdir -p`` whose new entries are synced: a crash does not lose a directory a file was installed in."""
    if path.is_dir():
        return
    _make_dirs(path.parent)
    path.mkdir(exist_ok=True)
    fsync_dir(path.parent)


def _paths(work_dir: Path, file_id: str) -> dict[str, Path]:
    return {part: work_dir / f"{file_id}.{part}" for part in ("manifest", "part", "have", "target")}


def _write_synced(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


write_synced = _write_synced  # replace a file with synced content (gateway/files/device_staging.py too)
