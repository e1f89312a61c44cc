"""msgpack adapter: the telemetry batch envelope (version 1) and control records.

This is the only module in gateway/ and bridge/ that imports msgpack (and the optional zstandard).
The format is specified byte for byte in docs/PROTOCOL.md; golden files live in tests/vectors/.

Envelope = 2-byte header + body::

    byte 0   format version (1)
    byte 1   flags: bit 0 = replay, bits 1-3 = compression (0 none, 1 zlib, 2 zstd), others 0
    bytes 2- body: msgpack map, compressed as the flags say

The replay bit sits outside the compressed body so the forwarder can set it when a record is
re-sent from the backlog without decoding anything.
"""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack

from bridge.errors import PermanentBridgeError
from bridge.model import Reading

FORMAT_VERSION = 1
FLAG_REPLAY = 0x01
_COMPRESSION_SHIFT = 1
_COMPRESSION_MASK = 0x0E
MAX_SCALE = 6
_MAX_EXACT_INT = 2**53

Compression = Literal["none", "zlib", "zstd"]
_COMPRESSION_CODES: dict[str, int] = {"none": 0, "zlib": 1, "zstd": 2}
_COMPRESSION_NAMES = {v: k for k, v in _COMPRESSION_CODES.items()}


class CodecError(PermanentBridgeError):
    """A payload could not be encoded or decoded."""


def zstd_available() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Batch:
    """A decoded telemetry batch."""

    gateway: str
    seq: int
    created_ms: int
    readings: list[Reading]
    replay: bool = False
    compression: Compression = "zlib"
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- values

def _decimal_scale(value: float) -> int | None:
    """Smallest number of decimals (0..MAX_SCALE) that reproduces ``value`` exactly, if any."""
    for scale in range(MAX_SCALE + 1):
        factor = 10**scale
        scaled = round(value * factor)
        if abs(scaled) < _MAX_EXACT_INT and scaled / factor == value:
            return scale
    return None


def _encode_values(values: Sequence[float]) -> tuple[int, list[int] | list[float]]:
    scale = 0
    for v in values:
        s = _decimal_scale(v)
        if s is None:
            return -1, [float(x) for x in values]
        scale = max(scale, s)
    factor = 10**scale
    ints = [round(v * factor) for v in values]
    if any(i / factor != v for i, v in zip(ints, values, strict=True)):  # pragma: no cover - guarded by _decimal_scale
        return -1, [float(x) for x in values]
    return scale, _deltas(ints)


def _deltas(values: Sequence[int]) -> list[int]:
    out = [values[0]]
    out.extend(b - a for a, b in itertools.pairwise(values))
    return out


def _undelta(values: Sequence[int]) -> list[int]:
    out: list[int] = []
    acc = 0
    for i, d in enumerate(values):
        acc = d if i == 0 else acc + d
        out.append(acc)
    return out


# ---------------------------------------------------------------- batches

def _series(readings: Iterable[Reading]) -> list[list[Any]]:
    grouped: dict[tuple[str, str], list[Reading]] = {}
    for r in readings:
        grouped.setdefault((r.device, r.metric), []).append(r)
    out: list[list[Any]] = []
    for (device, metric), rows in grouped.items():
        scale, values = _encode_values([r.value for r in rows])
        seqs = [r.seq for r in rows]
        seq_col: list[int] | None = None
        if all(s is not None for s in seqs):
            seq_col = _deltas([s for s in seqs if s is not None])
        out.append([device, metric, _deltas([r.ts_ms for r in rows]), scale, values, seq_col])
    return out


def encode_batch(
    gateway: str,
    seq: int,
    readings: Sequence[Reading],
    *,
    created_ms: int,
    compression: Compression = "zlib",
    level: int = 6,
    replay: bool = False,
) -> bytes:
    """Encode readings as a version-1 envelope. Readings must have finite values."""
    if not readings:
        raise CodecError("a batch needs at least one reading")
    body = {"gw": gateway, "seq": seq, "created_ms": created_ms, "n": len(readings), "series": _series(readings)}
    raw = msgpack.packb(body, use_bin_type=True)
    code = _COMPRESSION_CODES[compression]
    return bytes([FORMAT_VERSION, (code << _COMPRESSION_SHIFT) | (FLAG_REPLAY if replay else 0)]) + _compress(
        raw, compression, level
    )


def _compress(raw: bytes, compression: str, level: int) -> bytes:
    if compression == "none":
        return raw
    if compression == "zlib":
        return zlib.compress(raw, level)
    try:
        import zstandard
    except ImportError as exc:
        raise CodecError("zstd needs the 'zstandard' package (pip install edge-mqtt-gateway[zstd])") from exc
    return bytes(zstandard.ZstdCompressor(level=min(max(level, 1), 22)).compress(raw))


def _decompress(data: bytes, compression: str, limit: int) -> bytes:
    if compression == "none":
        return data
    if compression == "zlib":
        d = zlib.decompressobj()
        out = d.decompress(data, limit)
        if d.unconsumed_tail:
            raise CodecError(f"decompressed body exceeds {limit} bytes")
        return out
    try:
        import zstandard
    except ImportError as exc:
        raise CodecError("batch is zstd-compressed but 'zstandard' is not installed") from exc
    try:
        return bytes(zstandard.ZstdDecompressor().decompress(data, max_output_size=limit))
    except zstandard.ZstdError as exc:
        raise CodecError(f"bad zstd body: {exc}") from exc


def set_replay(envelope: bytes, replay: bool = True) -> bytes:
    """Return the envelope with the replay flag set (or cleared); the body is not touched."""
    if len(envelope) < 2 or envelope[0] != FORMAT_VERSION:
        raise CodecError("not a version-1 envelope")
    flags = envelope[1] | FLAG_REPLAY if replay else envelope[1] & ~FLAG_REPLAY
    return envelope[:1] + bytes([flags]) + envelope[2:]


def is_replay(envelope: bytes) -> bool:
    return len(envelope) >= 2 and bool(envelope[1] & FLAG_REPLAY)


def decode_batch(envelope: bytes, *, max_body_bytes: int = 64 * 1024 * 1024) -> Batch:
    """Decode a version-1 envelope; raise :class:`CodecError` with the reason on anything malformed."""
    if len(envelope) < 2:
        raise CodecError("envelope shorter than its 2-byte header")
    if envelope[0] != FORMAT_VERSION:
        raise CodecError(f"unsupported envelope version {envelope[0]}")
    flags = envelope[1]
    code = (flags & _COMPRESSION_MASK) >> _COMPRESSION_SHIFT
    if code not in _COMPRESSION_NAMES or flags & ~(_COMPRESSION_MASK | FLAG_REPLAY):
        raise CodecError(f"unknown flags 0x{flags:02x}")
    compression = _COMPRESSION_NAMES[code]
    try:
        raw = _decompress(envelope[2:], compression, max_body_bytes)
    except zlib.error as exc:
        raise CodecError(f"bad zlib body: {exc}") from exc
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CodecError(f"bad msgpack body: {exc}") from exc
    try:
        return _batch_from_body(body, compression, bool(flags & FLAG_REPLAY))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CodecError(f"malformed batch body: {exc!r}") from exc


def _batch_from_body(body: Any, compression: str, replay: bool) -> Batch:
    if not isinstance(body, dict):
        raise TypeError("body is not a map")
    readings: list[Reading] = []
    for device, metric, dts, scale, values, seq_col in body["series"]:
        ts = _undelta(dts)
        if scale == -1:
            vals = [float(v) for v in values]
        elif isinstance(scale, int) and 0 <= scale <= MAX_SCALE:
            factor = 10**scale
            vals = [i / factor for i in _undelta(values)]
        else:
            raise ValueError(f"bad scale {scale!r}")
        seqs: list[int | None] = list(_undelta(seq_col)) if seq_col is not None else [None] * len(ts)
        if not len(ts) == len(vals) == len(seqs):
            raise ValueError(f"column lengths differ in series {device}/{metric}")
        readings.extend(Reading(str(device), str(metric), t, v, s) for t, v, s in zip(ts, vals, seqs, strict=True))
    if body.get("n", len(readings)) != len(readings):
        raise ValueError(f"header says {body['n']} readings, series hold {len(readings)}")
    known = {"gw", "seq", "created_ms", "n", "series"}
    return Batch(
        gateway=str(body["gw"]),
        seq=int(body["seq"]),
        created_ms=int(body["created_ms"]),
        readings=readings,
        replay=replay,
        compression=compression,  # type: ignore[arg-type]
        extra={k: v for k, v in body.items() if k not in known},
    )


# ---------------------------------------------------------------- device payloads

def unpack_object(payload: bytes) -> Any:
    """Decode a msgpack payload sent by a device (no size blow-up: msgpack cannot expand)."""
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CodecError(f"bad msgpack: {exc}") from exc


# ---------------------------------------------------------------- control records

def encode_control(record: dict[str, Any]) -> bytes:
    """Control-lane records (alerts, events, responses, acks) are compact UTF-8 JSON objects."""
    return json.dumps(record, separators=(",", ":"), allow_nan=False, sort_keys=True).encode()


def decode_control(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CodecError(f"control record is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise CodecError("control record is not a JSON object")
    return obj

