"""The sending side's view of a file: hash it into a :class:`Manifest`, read its chunks back.

A file being sent must not change underneath: every chunk read is checked against the hash the
manifest lists, and a file that changed raises ``FileRejected("hash_mismatch")`` rather than send
data the receiver would refuse anyway.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridge.protocol.files import (
    BAD_CHUNK,
    DEFAULT_CHUNK_BYTES,
    HASH_MISMATCH,
    MALFORMED,
    MAX_CHUNK_BYTES,
    MAX_CHUNKS,
    MAX_MANIFEST_BYTES,
    MIN_CHUNK_BYTES,
    TOO_LARGE,
    FileRejected,
    Manifest,
    check_name,
    chunk_count,
    content_type_and_meta,
    decode_manifest,
    encode_manifest,
    new_file_id,
)

__all__ = ["check_extras", "plan_file", "read_chunk"]


def check_extras(content_type: str, meta: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The content type and metadata a manifest may carry, checked as a receiver checks them
    (``FileRejected("malformed")``: too long, not a JSON object, NaN or infinity, a lone surrogate)."""
    try:
        return content_type_and_meta({"content_type": content_type, "meta": dict(meta or {})})
    except (ValueError, TypeError, RecursionError) as exc:  # not JSON at all
        raise FileRejected(MALFORMED, f"meta is not JSON: {exc}") from None


def _readable(manifest: Manifest, max_manifest_bytes: int) -> Manifest:
    """``manifest`` if a receiver can read it back (the sender builds nothing it could not) and it
    fits ``max_manifest_bytes`` (a broker's packet size limit: ``too_large``)."""
    try:
        encoded = encode_manifest(manifest)
    except (ValueError, TypeError, RecursionError) as exc:
        raise FileRejected(MALFORMED, f"{manifest.name!r}: its manifest is not JSON: {exc}") from None
    if len(encoded) > max_manifest_bytes:
        raise FileRejected(TOO_LARGE, f"manifest of {len(encoded)} bytes is above {max_manifest_bytes} "
                           f"(files.max_manifest_bytes): use larger chunks")
    try:
        decode_manifest(encoded)
    except FileRejected as exc:
        raise FileRejected(MALFORMED, f"{manifest.name!r}: a receiver would refuse its manifest ({exc})") from None
    return manifest


def plan_file(path: Path, *, chunk_size: int = DEFAULT_CHUNK_BYTES, name: str | None = None,
              file_id: str | None = None, content_type: str = "application/octet-stream",
              meta: Mapping[str, Any] | None = None, device: str | None = None,
              max_size: int | None = None, max_manifest_bytes: int = MAX_MANIFEST_BYTES) -> Manifest:
    """Read ``path`` once and describe it. Raises ``FileRejected`` (``bad_name``, ``too_large``,
    ``malformed`` for anything but a regular file, ``hash_mismatch`` when it changes size while read)
    and ``OSError`` (unreadable); ``malformed`` too for a content type or metadata a receiver
    would refuse, checked before the file is read; ``too_large`` for a manifest above
    ``max_manifest_bytes`` (about 70 bytes per chunk)."""
    name = check_name(path.name if name is None else name)
    content_type, checked_meta = check_extras(content_type, meta)
    if not MIN_CHUNK_BYTES <= chunk_size <= MAX_CHUNK_BYTES:  # a receiver would refuse the manifest
        raise ValueError(f"chunk_size {chunk_size} is outside {MIN_CHUNK_BYTES}..{MAX_CHUNK_BYTES}")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # NONBLOCK: opening a FIFO must not hang us
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # a pipe, a device (/dev/zero) or a directory: it would never end
        os.close(fd)
        raise FileRejected(MALFORMED, f"{name!r} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        size = info.st_size
        if max_size is not None and size > max_size:
            raise FileRejected(TOO_LARGE, f"{name!r} has {size} bytes, the limit is {max_size}")
        if chunk_count(size, chunk_size) > MAX_CHUNKS:
            raise FileRejected(TOO_LARGE, f"{name!r} would take more than {MAX_CHUNKS} chunks of {chunk_size} bytes")
        whole = hashlib.sha256()
        hashes: list[str] = []
        for offset in range(0, size, chunk_size):  # exactly size bytes: a file that keeps growing is not chased
            block = f.read(min(chunk_size, size - offset))
            if len(block) != min(chunk_size, size - offset):
                raise FileRejected(HASH_MISMATCH, f"{name!r} shrank while it was read")
            whole.update(block)
            hashes.append(hashlib.sha256(block).hexdigest())
        if f.read(1):
            raise FileRejected(HASH_MISMATCH, f"{name!r} grew while it was read")
    return _readable(Manifest(file_id or new_file_id(), name, size, chunk_size, whole.hexdigest(), tuple(hashes),
                              content_type, checked_meta, int(time.time() * 1000), device), max_manifest_bytes)


def read_chunk(path: Path, manifest: Manifest, index: int) -> tuple[bytes, bytes]:
    """Chunk ``index`` of the file at ``path`` and its raw SHA-256 digest, checked against the
    manifest (``FileRejected("hash_mismatch")`` when the file changed since it was planned;
    ``bad_chunk`` for an index the manifest does not have, as a hostile receipt may ask)."""
    if not 0 <= index < manifest.chunks:
        raise FileRejected(BAD_CHUNK, f"{manifest.name!r} has no chunk {index} (it has {manifest.chunks})")
    length = manifest.chunk_length(index)
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, length, index * manifest.chunk_size)
    finally:
        os.close(fd)
    digest = hashlib.sha256(data).digest()
    if len(data) != length or digest.hex() != manifest.chunk_sha256[index]:
        raise FileRejected(HASH_MISMATCH, f"chunk {index} of {manifest.name!r} changed since it was planned")
    return data, digest
