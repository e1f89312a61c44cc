"""File transfer on the wire: manifests, chunks and receipts (docs/PROTOCOL.md, "File transfer").

A file goes from a *sender* to a *receiver* as one manifest (JSON: name, size, chunk size, the
SHA-256 of the whole and of every chunk) and its chunks (binary: a 72-byte header with the file id,
index, offset, length and SHA-256 of the data, then the data). The receiver answers with receipts
(JSON): which chunks it still misses, that it stored the whole file, or that it gave up and why.
Uploads (gateway -> cloud) and downloads (cloud -> gateway) use the same three messages, on
``{prefix}/files/up/{id}/...`` and ``{prefix}/files/down/{id}/...`` (:class:`FileTopics`).

Everything here is pure: encode and decode, with every check a receiver needs before it writes a
byte (:func:`decode_manifest`, :func:`decode_chunk`, :func:`check_chunk`). A bad message raises
:class:`FileRejected` with a short ``reason`` (a counter label, :data:`REJECT_REASONS`).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import struct
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

from bridge.protocol.errors import CodecError

__all__ = [
    "CHUNK_HEADER", "CHUNK_MAGIC", "DEFAULT_CHUNK_BYTES", "MAX_CHUNKS", "MAX_CHUNK_BYTES", "MAX_MANIFEST_BYTES",
    "MIN_CHUNK_BYTES", "REJECT_REASONS", "Chunk", "Direction", "FileRejected", "Manifest", "Receipt",
    "ReceiptState", "check_chunk", "check_file_id", "check_name", "chunk_count", "decode_chunk", "decode_manifest",
    "decode_receipt", "encode_chunk", "encode_manifest", "encode_receipt", "from_ranges", "new_file_id", "to_ranges",
    "valid_file_id",
]

Direction = Literal["up", "down"]
ReceiptState = Literal["missing", "stored", "failed"]
RECEIPT_STATES: tuple[ReceiptState, ...] = ("missing", "stored", "failed")

VERSION = 1
CHUNK_MAGIC = b"EGFC"
CHUNK_HEADER = struct.Struct(">4sBBH16sIQI32s")  # magic, version, flags, reserved, id, index, offset, length, sha256
assert CHUNK_HEADER.size == 72
FLAG_RESEND = 0x01  # the sender sent this chunk before (after a reconnect, a restart or a receipt)

MIN_CHUNK_BYTES = 1024
MAX_CHUNK_BYTES = 1024 * 1024
DEFAULT_CHUNK_BYTES = 64 * 1024
MAX_CHUNKS = 16384
MAX_MANIFEST_BYTES = 2 * 1024 * 1024
MAX_NAME_BYTES = 255
MAX_CONTENT_TYPE = 255
MAX_META_BYTES = 4096
MAX_RECEIPT_BYTES = 256 * 1024
MAX_REASON = 200

# Rejection reasons (counter labels, docs/OPERATIONS.md).
MALFORMED = "malformed"  # not the documented JSON object or binary header
BAD_VERSION = "bad_version"
BAD_ID = "bad_id"
BAD_NAME = "bad_name"  # a path, a hidden or reserved name, a control character, too long
TOO_LARGE = "too_large"  # above the receiver's size limit or the protocol's chunk limits
HASH_MISMATCH = "hash_mismatch"  # a chunk (or the whole file) is not what its SHA-256 says
BAD_CHUNK = "bad_chunk"  # index, offset or length do not fit the manifest
UNKNOWN_FILE = "unknown_file"  # a chunk or receipt for a file this side does not know
CONFLICT = "conflict"  # a second manifest under a known id that differs from the first
NO_SPACE = "no_space"  # the transfer disk budget is used up
REJECT_REASONS = (MALFORMED, BAD_VERSION, BAD_ID, BAD_NAME, TOO_LARGE, HASH_MISMATCH, BAD_CHUNK, UNKNOWN_FILE,
                  CONFLICT, NO_SPACE)

_HEX = frozenset("0123456789abcdef")
_RESERVED_NAMES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                             *(f"lpt{i}" for i in range(10))})


class FileRejected(CodecError):
    """A file-transfer message, or the file it builds, is refused. ``reason`` is one of
    :data:`REJECT_REASONS`; the message has the details."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def new_file_id() -> str:
    """A fresh file id: 128 random bits as 32 lowercase hex digits (unique without coordination,
    so two nodes or a restored data dir never reuse one)."""
    return secrets.token_hex(16)


def valid_file_id(value: object) -> TypeGuard[str]:
    """32 lowercase hex digits (what :func:`new_file_id` makes)."""
    return isinstance(value, str) and len(value) == 32 and set(value) <= _HEX


def check_file_id(value: object) -> str:
    if not valid_file_id(value):
        raise FileRejected(BAD_ID, f"{str(value)[:40]!r} is not 32 lowercase hex digits")
    return value


def check_name(name: object) -> str:
    """A file name a receiver may create in its own directory, or :class:`FileRejected` (``bad_name``).

    One path component of 1 to 255 UTF-8 bytes, in Unicode NFC: no ``/`` or ``\\``, no NUL or other
    control character, not starting with ``.`` (so never ``.``, ``..`` or a hidden file) or ``-``,
    no leading or trailing space, and not a Windows device name (``con``, ``nul``, ``com1`` ...)."""
    if not isinstance(name, str) or not name:
        raise FileRejected(BAD_NAME, "the name must be a non-empty string")
    shown = repr(name[:60])
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise FileRejected(BAD_NAME, f"{shown} is longer than {MAX_NAME_BYTES} bytes")
    if any(c in "/\\" for c in name):
        raise FileRejected(BAD_NAME, f"{shown} is a path, not a file name")
    if any(unicodedata.category(c) in ("Cc", "Cs", "Cf", "Zl", "Zp") for c in name):
        raise FileRejected(BAD_NAME, f"{shown} holds a control or format character")
    if name[0] in ".-" or name != name.strip():
        raise FileRejected(BAD_NAME, f"{shown} starts with '.' or '-', or with or ends in a space")
    if unicodedata.normalize("NFC", name) != name:
        raise FileRejected(BAD_NAME, f"{shown} is not in Unicode NFC")
    if name.split(".")[0].lower() in _RESERVED_NAMES:
        raise FileRejected(BAD_NAME, f"{shown} is a reserved device name")
    return name


def chunk_count(size: int, chunk_size: int) -> int:
    return math.ceil(size / chunk_size)


@dataclass(frozen=True)
class Manifest:
    """What a file is: everything a receiver checks the chunks and the whole against."""

    id: str
    name: str
    size: int
    chunk_size: int
    sha256: str  # of the whole file, lowercase hex
    chunk_sha256: tuple[str, ...]  # of each chunk, in index order
    content_type: str = "application/octet-stream"
    meta: Mapping[str, Any] = field(default_factory=dict)
    created_ms: int = 0
    device: str | None = None  # for an upload: the device that sent the file; for a download: its target

    @property
    def chunks(self) -> int:
        return len(self.chunk_sha256)

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def to_json(self) -> dict[str, Any]:
        return {"v": VERSION, "id": self.id, "name": self.name, "size": self.size, "chunk_size": self.chunk_size,
                "chunks": self.chunks, "sha256": self.sha256, "chunk_sha256": list(self.chunk_sha256),
                "content_type": self.content_type, "meta": dict(self.meta), "created_ms": self.created_ms,
                "device": self.device}


def _json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def encode_manifest(manifest: Manifest) -> bytes:
    return _json(manifest.to_json())


def _load_object(payload: bytes, limit: int, what: str, *, version_optional: bool = False) -> dict[str, Any]:
    if len(payload) > limit:
        raise FileRejected(TOO_LARGE, f"{what} of {len(payload)} bytes is above {limit}")
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FileRejected(MALFORMED, f"{what} is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FileRejected(MALFORMED, f"{what} is not a JSON object")
    try:  # JSON may spell a lone surrogate (\ud800) or a number beyond the doubles (1e400): no text holds them
        _json(obj)
    except (ValueError, RecursionError) as exc:
        raise FileRejected(MALFORMED, f"{what} is not valid Unicode text with finite numbers: {exc}") from None
    version = obj.get("v", VERSION if version_optional else None)
    if type(version) is not int or version != VERSION:
        raise FileRejected(BAD_VERSION, f"{what} version {str(obj.get('v'))[:20]!r} (this side reads {VERSION})")
    return obj


# for other JSON messages of the same family (the device side's, gateway/files/device_contract.py):
# a JSON object of at most ``limit`` bytes whose ``v`` is VERSION (or absent, with
# ``version_optional``), and the canonical compact form every file-transfer JSON message takes
load_object = _load_object
canonical_json = _json


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _int(obj: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FileRejected(MALFORMED, f"{key} must be an integer")
    if not lo <= value <= hi:
        raise FileRejected(TOO_LARGE if value > hi else MALFORMED, f"{key} {value} is outside {lo}..{hi}")
    return value


def _sha(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise FileRejected(MALFORMED, f"{what} is not 64 lowercase hex digits")
    return value


def content_type_and_meta(obj: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A manifest's optional ``content_type`` and ``meta``, checked (``malformed``)."""
    content_type = obj.get("content_type", "application/octet-stream")
    if not isinstance(content_type, str) or not 0 < len(content_type) <= MAX_CONTENT_TYPE:
        raise FileRejected(MALFORMED, "content_type must be a short non-empty string")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict) or len(_json(meta)) > MAX_META_BYTES:
        raise FileRejected(MALFORMED, f"meta must be a JSON object of at most {MAX_META_BYTES} bytes")
    return content_type, meta


def decode_manifest(payload: bytes, *, max_size: int = 2**62) -> Manifest:
    """Parse and check a manifest. ``max_size`` is the receiver's size limit (``too_large``)."""
    obj = _load_object(payload, MAX_MANIFEST_BYTES, "manifest")
    file_id = check_file_id(obj.get("id"))
    name = check_name(obj.get("name"))
    size = _int(obj, "size", 0, max_size)
    chunk_size = _int(obj, "chunk_size", MIN_CHUNK_BYTES, MAX_CHUNK_BYTES)
    n = chunk_count(size, chunk_size)
    if n > MAX_CHUNKS:
        raise FileRejected(TOO_LARGE, f"{n} chunks is above {MAX_CHUNKS}")
    if _int(obj, "chunks", 0, MAX_CHUNKS) != n:
        raise FileRejected(MALFORMED, f"chunks is {obj['chunks']}, size and chunk_size make {n}")
    hashes = obj.get("chunk_sha256")
    if not isinstance(hashes, list) or len(hashes) != n:
        raise FileRejected(MALFORMED, f"chunk_sha256 must list {n} hashes")
    content_type, meta = content_type_and_meta(obj)
    device = obj.get("device")
    if device is not None and not _valid_device(device):
        raise FileRejected(MALFORMED, "device must be a device id or null")
    return Manifest(file_id, name, size, chunk_size, _sha(obj.get("sha256"), "sha256"),
                    tuple(_sha(h, f"chunk_sha256[{i}]") for i, h in enumerate(hashes)),
                    content_type, meta, _int(obj, "created_ms", 0, 2**63 - 1), device)


def _valid_device(value: object) -> bool:
    from bridge.protocol.topics import valid_id

    return valid_id(value)


@dataclass(frozen=True)
class Chunk:
    file_id: str
    index: int
    offset: int
    data: bytes
    sha256: str
    resend: bool = False


def encode_chunk(file_id: str, index: int, offset: int, data: bytes, *, resend: bool = False,
                 sha256: bytes | None = None) -> bytes:
    """The binary chunk message: the 72-byte header then ``data``. ``sha256`` (the raw digest) may
    be passed when known, to save hashing ``data`` again."""
    digest = sha256 if sha256 is not None else hashlib.sha256(data).digest()
    raw_id = bytes.fromhex(check_file_id(file_id))
    header = CHUNK_HEADER.pack(CHUNK_MAGIC, VERSION, FLAG_RESEND if resend else 0, 0, raw_id, index, offset, len(data),
                               digest)
    return header + data


def decode_chunk(payload: bytes) -> Chunk:
    """Parse a chunk message and check its data against its own SHA-256 (``hash_mismatch``)."""
    if len(payload) < CHUNK_HEADER.size:
        raise FileRejected(MALFORMED, f"chunk of {len(payload)} bytes is shorter than its header")
    magic, version, flags, reserved, raw_id, index, offset, length, digest = CHUNK_HEADER.unpack_from(payload)
    if magic != CHUNK_MAGIC:
        raise FileRejected(MALFORMED, "not a chunk (magic)")
    if version != VERSION:
        raise FileRejected(BAD_VERSION, f"chunk version {version} (this side reads {VERSION})")
    if flags & ~FLAG_RESEND or reserved:  # a later version's meaning is refused, never misread
        raise FileRejected(MALFORMED, f"reserved flag bits {flags:#04x} or reserved field {reserved} set")
    data = payload[CHUNK_HEADER.size:]
    if len(data) != length:
        raise FileRejected(MALFORMED, f"header says {length} bytes of data, the message holds {len(data)}")
    if hashlib.sha256(data).digest() != digest:
        raise FileRejected(HASH_MISMATCH, f"chunk {index} does not match its SHA-256")
    return Chunk(raw_id.hex(), index, offset, data, digest.hex(), bool(flags & FLAG_RESEND))


def check_chunk(manifest: Manifest, chunk: Chunk) -> None:
    """The chunk belongs where it says in ``manifest`` and its data is what the manifest lists."""
    if chunk.file_id != manifest.id:
        raise FileRejected(UNKNOWN_FILE, f"chunk of {chunk.file_id} checked against {manifest.id}")
    if not 0 <= chunk.index < manifest.chunks:
        raise FileRejected(BAD_CHUNK, f"index {chunk.index} is outside 0..{manifest.chunks - 1}")
    if chunk.offset != chunk.index * manifest.chunk_size or len(chunk.data) != manifest.chunk_length(chunk.index):
        raise FileRejected(BAD_CHUNK, f"chunk {chunk.index} has offset {chunk.offset} and {len(chunk.data)} bytes")
    if chunk.sha256 != manifest.chunk_sha256[chunk.index]:
        raise FileRejected(HASH_MISMATCH, f"chunk {chunk.index} is not the one the manifest lists")


def to_ranges(indexes: Iterable[int]) -> list[list[int]]:
    """Sorted indexes as ``[first, last]`` ranges, both inclusive: ``[0, 1, 2, 5]`` -> ``[[0, 2], [5, 5]]``."""
    ranges: list[list[int]] = []
    for i in sorted(set(indexes)):
        if ranges and ranges[-1][1] == i - 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    return ranges


def from_ranges(ranges: object, limit: int = MAX_CHUNKS) -> list[int]:
    """The indexes of ``[first, last]`` ranges (each below ``limit``), sorted, without repeats."""
    if not isinstance(ranges, list):
        raise FileRejected(MALFORMED, "chunks must be a list of [first, last] ranges")
    pairs: list[tuple[int, int]] = []
    for item in ranges:
        if (not isinstance(item, list) or len(item) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in item)
                or not 0 <= item[0] <= item[1] < limit):
            raise FileRejected(MALFORMED, f"{str(item)[:40]} is not a [first, last] range below {limit}")
        pairs.append((item[0], item[1]))
    out: list[int] = []  # merged first: overlapping ranges cost their length once, not once per range
    for first, last in sorted(pairs):
        start = max(first, out[-1] + 1) if out else first
        out.extend(range(start, last + 1))
    return out


@dataclass(frozen=True)
class Receipt:
    """The receiver's answer about one file.

    ``missing``: send these chunks (and the manifest too when ``manifest`` is set);
    ``stored``: the whole file was verified and stored, the sender may forget it;
    ``failed``: the receiver gave up on it (``reason`` says why) and will not store it."""

    id: str
    state: ReceiptState
    missing: tuple[int, ...] = ()
    manifest: bool = False
    reason: str = ""
    sha256: str | None = None
    ts_ms: int = 0


def encode_receipt(receipt: Receipt) -> bytes:
    obj: dict[str, Any] = {"v": VERSION, "id": check_file_id(receipt.id), "state": receipt.state,
                           "ts_ms": receipt.ts_ms}
    if receipt.state == "missing":
        obj["chunks"] = to_ranges(receipt.missing)
        obj["manifest"] = receipt.manifest
    if receipt.reason:
        obj["reason"] = receipt.reason[:MAX_REASON]
    if receipt.sha256 is not None:
        obj["sha256"] = receipt.sha256
    return _json(obj)


def decode_receipt(payload: bytes) -> Receipt:
    obj = _load_object(payload, MAX_RECEIPT_BYTES, "receipt")
    file_id = check_file_id(obj.get("id"))
    state = obj.get("state")
    if state not in RECEIPT_STATES:
        raise FileRejected(MALFORMED, f"state {str(state)[:20]!r} is not one of {', '.join(RECEIPT_STATES)}")
    reason = obj.get("reason", "")
    if not isinstance(reason, str):
        raise FileRejected(MALFORMED, "reason must be a string")
    sha = obj.get("sha256")
    missing: Sequence[int] = ()
    manifest = False
    if state == "missing":
        missing = from_ranges(obj.get("chunks", []))
        manifest = obj.get("manifest", False)
        if not isinstance(manifest, bool):
            raise FileRejected(MALFORMED, "manifest must be true or false")
    ts = obj.get("ts_ms", 0)
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise FileRejected(MALFORMED, "ts_ms must be an integer")
    return Receipt(file_id, state, tuple(missing), manifest, reason[:MAX_REASON],
                   None if sha is None else _sha(sha, "sha256"), ts)
