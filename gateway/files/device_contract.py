"""The device side of file uploads, pure: which topics carry them, what a device's manifest says,
and the gateway's answer (docs/OPERATIONS.md, "Device file uploads").

A device publishes a JSON manifest on ``topics.file_manifest`` (``name``, ``size``, ``sha256`` of
the whole, ``chunk_size``, optional ``content_type`` and ``meta``), then each chunk as raw bytes
on ``topics.file_chunk`` with its index in the topic. The gateway answers on ``topics.file_status``
with :func:`encode_status`. Unlike the cloud protocol (:mod:`bridge.protocol.files`) a device
manifest lists no per-chunk hashes: a small device cannot be asked to hash its file twice, so
the gateway checks the whole file's SHA-256 once every chunk is in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from bridge.protocol.files import (
    MALFORMED,
    MAX_CHUNK_BYTES,
    MAX_CHUNKS,
    MAX_REASON,
    MIN_CHUNK_BYTES,
    TOO_LARGE,
    FileRejected,
    canonical_json,
    check_name,
    chunk_count,
    content_type_and_meta,
    load_object,
    to_ranges,
)
from bridge.protocol.topics import TopicPattern, valid_id
from gateway.config_sections import TopicsSection

__all__ = ["MAX_DEVICE_MANIFEST_BYTES", "DeviceFileTopics", "DeviceManifest", "FileMessage", "Part", "State",
           "decode_device_manifest", "encode_status", "ids_valid"]

Part = Literal["manifest", "chunk"]
State = Literal["accepted", "missing", "complete", "failed"]
MAX_DEVICE_MANIFEST_BYTES = 8192  # name (255 B) + meta (4 KiB) + the rest, with room to spare
_MAX_INDEX_DIGITS = len(str(MAX_CHUNKS))


@dataclass(frozen=True)
class FileMessage:
    """A message on a device file topic: whose, which file, manifest or chunk (and its index)."""

    part: Part
    device: str
    file_id: str
    index: int = -1  # a chunk's index; -1 for a manifest, or a chunk topic whose index is not a number


class DeviceFileTopics:
    """The three device file topics of ``[topics]``, and the one cheap test ingest runs per message.

    :attr:`needle` is a literal level (``"/files/"`` by default) every manifest and chunk topic
    holds: a message whose topic lacks it is telemetry, told apart by one substring search. Only
    topics that hold it are matched against the patterns (:meth:`parse`)."""

    def __init__(self, topics: TopicsSection) -> None:
        self.manifest = TopicPattern(topics.file_manifest)
        self.chunk = TopicPattern(topics.file_chunk)
        self.status = TopicPattern(topics.file_status)
        self.needle = _needle(topics.file_manifest, topics.file_chunk)

    def subscriptions(self) -> list[str]:
        """MQTT filters of every manifest and chunk topic (for an external broker)."""
        return [self.manifest.subscription(), self.chunk.subscription()]

    def parse(self, topic: str) -> FileMessage | None:
        """The file message ``topic`` carries, or None for any other topic. The ids are not checked
        here (:func:`ids_valid`, by the receiver): a topic of the right shape is a file topic, so a
        bad id is refused as ``bad_id`` there instead of reaching the telemetry decoder."""
        for part, pattern in (("chunk", self.chunk), ("manifest", self.manifest)):
            fields = pattern.match(topic)
            if fields is not None:
                index = fields.get("index", "")
                ok = index.isdigit() and index.isascii() and len(index) <= _MAX_INDEX_DIGITS
                return FileMessage("chunk" if part == "chunk" else "manifest", fields["device_id"],
                                   fields["file_id"], int(index) if ok and part == "chunk" else -1)
        return None

    def status_topic(self, device: str, file_id: str) -> str:
        return self.status.format(device_id=device, file_id=file_id)


def _needle(*patterns: str) -> str:
    """A ``/level/`` every topic of these patterns holds (a literal level, neither the first nor
    the last of any), or "" (every topic is then matched against the patterns)."""
    split = [p.split("/") for p in patterns]
    for i, level in enumerate(split[0]):
        if i > 0 and "{" not in level and all(0 < i < len(s) - 1 and s[i] == level for s in split):
            return f"/{level}/"
    return ""


@dataclass(frozen=True)
class DeviceManifest:
    """A device's description of the file it is about to send."""

    name: str
    size: int
    sha256: str
    chunk_size: int
    content_type: str = "application/octet-stream"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def chunks(self) -> int:
        return chunk_count(self.size, self.chunk_size)

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256, "chunk_size": self.chunk_size,
                "content_type": self.content_type, "meta": self.meta}


def decode_device_manifest(payload: bytes, max_size: int) -> DeviceManifest:
    """Parse and check a device manifest, or raise :class:`FileRejected` (``malformed``,
    ``bad_version``, ``bad_name``, ``too_large`` above ``max_size`` bytes or the chunk limits)."""
    obj = load_object(payload, MAX_DEVICE_MANIFEST_BYTES, "manifest", version_optional=True)
    name = check_name(obj.get("name"))
    size, chunk_size = _int(obj, "size"), _int(obj, "chunk_size")
    if size > max_size:
        raise FileRejected(TOO_LARGE, f"{size} bytes is above the limit of {max_size}")
    if chunk_size > MAX_CHUNK_BYTES or chunk_size < MIN_CHUNK_BYTES:
        raise FileRejected(TOO_LARGE if chunk_size > MAX_CHUNK_BYTES else MALFORMED,
                           f"chunk_size {chunk_size} is outside {MIN_CHUNK_BYTES}..{MAX_CHUNK_BYTES}")
    if chunk_count(size, chunk_size) > MAX_CHUNKS:
        raise FileRejected(TOO_LARGE, f"{chunk_count(size, chunk_size)} chunks is above {MAX_CHUNKS}")
    sha = obj.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64 or not set(sha) <= set("0123456789abcdef"):
        raise FileRejected(MALFORMED, "sha256 must be 64 lowercase hex digits")
    content_type, meta = content_type_and_meta(obj)
    return DeviceManifest(name, size, sha, chunk_size, content_type, meta)


def _int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FileRejected(MALFORMED, f"{key} must be a non-negative integer")
    return value


def encode_status(state: State, missing: list[int] | None = None, reason: str = "", *,
                  manifest: bool = False) -> bytes:
    """The gateway's answer: ``{"state": ..., "chunks": [[first, last], ...], "manifest": bool,
    "reason": ...}``; ``chunks`` and ``manifest`` only for ``accepted`` and ``missing``, ``reason``
    only when there is one."""
    obj: dict[str, Any] = {"state": state}
    if state in ("accepted", "missing"):
        obj["chunks"] = to_ranges(missing or [])
        obj["manifest"] = manifest
    if reason:
        obj["reason"] = reason[:MAX_REASON]
    return canonical_json(obj)


def ids_valid(message: FileMessage) -> bool:
    """Both ids follow the id grammar (so neither can act as a path or a topic level of its own)."""
    return valid_id(message.device) and valid_id(message.file_id)
