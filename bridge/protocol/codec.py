"""msgpack adapter: the telemetry batch envelope (version 2, decodes 1 too) and device payloads.

This is the only module in gateway/ and bridge/ that imports msgpack (and the optional zstandard).
The format is specified byte for byte in docs/PROTOCOL.md; golden files live in tests/vectors/.

Envelope = 2-byte header + body::

    byte 0   format version (2; version 1 is still decoded)
    byte 1   flags: bit 0 = replay, bits 1-3 = compression (0 none, 1 zlib, 2 zstd), others 0
    bytes 2- body: msgpack map, compressed as the flags say

The replay bit sits outside the compressed body so the forwarder can set it when a record is
re-sent from the backlog without decoding anything.

Values are exact by construction: :func:`carried` decides, when a device's value is decoded,
whether the envelope can carry it bit for bit (every finite double, -0.0 included, and every
integer in the int64/uint64 range can); the gateway rejects the others one by one. A series whose
values do not all fit the compact decimal form is written in the raw form instead (that series
only), so encoding a batch of carried values cannot fail.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack

from bridge.protocol.errors import CodecError
from bridge.protocol.model import Reading, Value
from bridge.protocol.topics import valid_id

__all__ = ["Batch", "CodecError", "Compression", "carried", "decode_batch", "encode_batch", "is_replay",
           "set_replay", "unpack_object", "zstd_available"]

FORMAT_VERSION = 2
DECODABLE_VERSIONS = (1, 2)
FLAG_REPLAY = 0x01
_COMPRESSION_SHIFT = 1
_COMPRESSION_MASK = 0x0E
MAX_SCALE = 6
RAW_SCALE = -1
MAX_DECIMAL_INT = 2**53  # integers of the decimal form (after the running sum) stay within +-2**53
INT_MIN = -(2**63)
UINT_MAX = 2**64 - 1
_INT64_MAX = 2**63 - 1
_SERIES_FIELDS = 6
_FACTORS = [10**s for s in range(MAX_SCALE + 1)]

Compression = Literal["none", "zlib", "zstd"]
_COMPRESSION_CODES: dict[str, int] = {"none": 0, "zlib": 1, "zstd": 2}
_COMPRESSION_NAMES = {v: k for k, v in _COMPRESSION_CODES.items()}


def zstd_available() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Batch:
    """A decoded telemetry batch. ``stream`` is empty for a version-1 envelope (it had none)."""

    gateway: str
    seq: int
    created_ms: int
    readings: list[Reading]
    replay: bool = False
    compression: Compression = "zlib"
    extra: dict[str, Any] = field(default_factory=dict)
    stream: str = ""
    version: int = FORMAT_VERSION


# ---------------------------------------------------------------- values

def carried(value: int | float) -> Value | None:
    """The value as a batch carries it, or None if no batch can carry it exactly.

    Finite doubles are carried as they are (sign of zero included). Integers within +-2**53 are
    doubles exactly, so they become floats; larger ones stay integers up to the int64/uint64 range
    (msgpack's). NaN, infinities and integers outside that range are refused.
    """
    if type(value) is float:
        return value if math.isfinite(value) else None
    if -MAX_DECIMAL_INT <= value <= MAX_DECIMAL_INT:
        return float(value)
    return value if INT_MIN <= value <= UINT_MAX else None


def _encode_values(values: list[Value]) -> tuple[int, list[int] | list[Value]]:
    """(scale, column): the decimal form at the smallest scale that carries every value of the
    series exactly, else the raw form. -0.0, non-integral doubles needing more than MAX_SCALE
    decimals and anything beyond +-2**53 once scaled do not fit the decimal form.

    Whole-series passes (one per scale tried) instead of a loop per value: the common case of a
    sensor at a fixed resolution costs a few list comprehensions. Scales below the first value's
    own are skipped, and a first value that fits no scale means the raw form at once."""
    start = _first_scale(values[0]) if values else 0
    if start is None:
        return RAW_SCALE, list(values)
    for factor in _FACTORS[start:]:
        try:
            ints = [round(v * factor) for v in values]
        except (OverflowError, ValueError):  # a double so large that scaling it overflows
            break
        if ints and (max(ints) > MAX_DECIMAL_INT or min(ints) < -MAX_DECIMAL_INT):
            break  # a larger scale only makes them larger
        if [i / factor for i in ints] == values:  # exact: the division gives back every double
            if 0 in ints and any(i == 0 and math.copysign(1.0, v) < 0 for i, v in zip(ints, values, strict=True)):
                break  # -0.0: the decimal form has no sign of zero
            return _FACTORS.index(factor), _deltas(ints)
    return RAW_SCALE, list(values)


def _first_scale(value: Value) -> int | None:
    """The smallest scale at which ``value`` alone fits the decimal form, or None."""
    if not -MAX_DECIMAL_INT <= value <= MAX_DECIMAL_INT:
        return None
    for scale, factor in enumerate(_FACTORS):
        i = round(value * factor)
        if -MAX_DECIMAL_INT <= i <= MAX_DECIMAL_INT and i / factor == value:
            return scale
    return None


def _deltas(values: Sequence[int]) -> list[int]:
    out = [values[0]] if values else []
    out.extend(b - a for a, b in itertools.pairwise(values))
    return out


def _undelta(column: Any, what: str, low: int = INT_MIN, high: int = _INT64_MAX) -> list[int]:
    """Running sum of a delta column of msgpack integers; each sum must lie in [low, high]."""
    if not isinstance(column, list):
        raise CodecError(f"{what} column is not an array")
    out: list[int] = []
    acc = 0
    for d in column:
        if type(d) is not int:
            raise CodecError(f"{what} column holds a {type(d).__name__}, not an integer")
        acc += d
        if not low <= acc <= high:
            raise CodecError(f"{what} column leaves its range: {acc}")
        out.append(acc)
    return out


# ---------------------------------------------------------------- batches

def _series(readings: Iterable[Reading]) -> list[Sequence[Any]]:
    """The series of a batch, in order of first appearance. Most series of a live batch hold one
    reading (a batch spans a few seconds of many devices): those skip the column passes."""
    grouped: dict[tuple[str, str], list[Reading]] = {}
    get = grouped.get
    for r in readings:
        key = (r[0], r[1])
        rows = get(key)
        if rows is None:
            grouped[key] = [r]
        else:
            rows.append(r)
    return [_one(rows[0]) if len(rows) == 1 else _columns(rows) for rows in grouped.values()]


def _one(r: Reading) -> tuple[Any, ...]:
    """A series of one reading: what :func:`_columns` gives for it, without the column passes."""
    device, metric, ts, value, seq = r
    if value:  # the scale depends on the number only (not its type): remembered for values that recur
        scale = _SCALE_OF.get(value, _UNKNOWN)
        if scale == _UNKNOWN:
            if len(_SCALE_OF) >= _SCALE_CACHE_MAX:
                _SCALE_OF.clear()
            scale = _SCALE_OF[value] = _first_scale(value)
    else:  # 0.0 and 0 have scale 0, -0.0 is raw (as in _encode_values)
        scale = 0 if math.copysign(1.0, value) > 0 else None
    # tuples: msgpack writes them as the same arrays as lists, and they cost one allocation less
    if scale is None:
        return (device, metric, (ts,), RAW_SCALE, (value,), None if seq is None else (seq,))
    return (device, metric, (ts,), scale, (round(value * _FACTORS[scale]),), None if seq is None else (seq,))


_UNKNOWN = -2
_SCALE_CACHE_MAX = 4096
_SCALE_OF: dict[Value, int | None] = {}  # value (never a zero) -> its _first_scale


def _columns(rows: list[Reading]) -> Sequence[Any]:
    _, _, ts, values, seqs = zip(*rows, strict=True)
    scale, column = _encode_values(list(values))  # decimal or raw, per series
    seq_col = None if None in seqs else _deltas(seqs)
    return [rows[0][0], rows[0][1], _deltas(ts), scale, column, seq_col]


def encode_batch(
    gateway: str,
    seq: int,
    readings: Sequence[Reading],
    *,
    stream: str,
    created_ms: int,
    compression: Compression = "zlib",
    level: int = 6,
    replay: bool = False,
) -> bytes:
    """Encode readings as a version-2 envelope. Every value must be one :func:`carried` returns
    (the gateway's decoder makes sure); ts and device seqs must be int64. Cannot fail otherwise."""
    body = {"gw": gateway, "stream": stream, "seq": seq, "created_ms": created_ms, "n": len(readings),
            "series": _series(readings)}
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
    # one frame, content size written (the default), no checksum, no dictionary
    return bytes(zstandard.ZstdCompressor(level=min(max(level, 1), 22)).compress(raw))


def _decompress(data: bytes, compression: str, limit: int) -> bytes:
    if compression == "none":
        return data
    if compression == "zlib":
        d = zlib.decompressobj()
        try:
            out = d.decompress(data, limit)
        except zlib.error as exc:
            raise CodecError(f"bad zlib body: {exc}") from exc
        if d.unconsumed_tail:
            raise CodecError(f"decompressed body exceeds {limit} bytes")
        if not d.eof or d.unused_data:
            raise CodecError("bad zlib body: truncated stream or bytes after its end")
        return out
    return _zstd_decompress(data, limit)


def _zstd_decompress(data: bytes, limit: int) -> bytes:
    try:
        import zstandard
    except ImportError as exc:
        raise CodecError("batch is zstd-compressed but 'zstandard' is not installed") from exc
    try:
        size = zstandard.frame_content_size(data)
        if size < 0:
            raise CodecError("bad zstd body: the frame does not state its content size")
        if size > limit:
            raise CodecError(f"decompressed body exceeds {limit} bytes")
        obj = zstandard.ZstdDecompressor().decompressobj()
        out = bytes(obj.decompress(data))
    except zstandard.ZstdError as exc:
        raise CodecError(f"bad zstd body: {exc}") from exc
    if not obj.eof or obj.unused_data or len(out) != size:
        raise CodecError("bad zstd body: truncated frame or bytes after its end")
    return out


def set_replay(envelope: bytes, replay: bool = True) -> bytes:
    """Return the envelope with the replay flag set (or cleared); the body is not touched."""
    if len(envelope) < 2 or envelope[0] not in DECODABLE_VERSIONS:
        raise CodecError("not a version-1 or version-2 envelope")
    flags = envelope[1] | FLAG_REPLAY if replay else envelope[1] & ~FLAG_REPLAY
    return envelope[:1] + bytes([flags]) + envelope[2:]


def is_replay(envelope: bytes) -> bool:
    return len(envelope) >= 2 and bool(envelope[1] & FLAG_REPLAY)


def decode_batch(envelope: bytes, *, max_body_bytes: int = 64 * 1024 * 1024) -> Batch:
    """Decode a version-1 or version-2 envelope; raise :class:`CodecError` with the reason on
    anything malformed (and on an unknown version, flag or compression code)."""
    if len(envelope) < 2:
        raise CodecError("envelope shorter than its 2-byte header")
    version = envelope[0]
    if version not in DECODABLE_VERSIONS:
        raise CodecError(f"unsupported envelope version {version}")
    flags = envelope[1]
    code = (flags & _COMPRESSION_MASK) >> _COMPRESSION_SHIFT
    if code not in _COMPRESSION_NAMES or flags & ~(_COMPRESSION_MASK | FLAG_REPLAY):
        raise CodecError(f"unknown flags 0x{flags:02x}")
    compression = _COMPRESSION_NAMES[code]
    raw = _decompress(envelope[2:], compression, max_body_bytes)
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CodecError(f"bad msgpack body: {exc}") from exc
    return _batch_from_body(body, version, compression, bool(flags & FLAG_REPLAY))


def _field(body: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = body.get(key, default)
    if type(value) is not kind:
        raise CodecError(f"malformed batch body: {key!r} is {value!r:.40}, expected {kind.__name__}")
    return value


def _series_readings(entry: Any, version: int) -> list[Reading]:
    if not isinstance(entry, list) or len(entry) < _SERIES_FIELDS:
        raise CodecError("malformed batch body: a series is not an array of 6 or more elements")
    device, metric, dts, scale, values, seq_col = entry[:_SERIES_FIELDS]  # later elements: ignored
    if type(device) is not str or type(metric) is not str:
        raise CodecError("malformed batch body: series device and metric must be strings")
    ts = _undelta(dts, "ts")
    if type(scale) is int and scale == RAW_SCALE:
        if not isinstance(values, list) or not all(type(v) in (int, float) for v in values):
            raise CodecError("malformed batch body: raw values must be msgpack numbers")
        vals: list[Value] = [float(v) for v in values] if version == 1 else values
    elif type(scale) is int and 0 <= scale <= MAX_SCALE:
        factor = _FACTORS[scale]
        vals = [i / factor for i in _undelta(values, "values", -MAX_DECIMAL_INT, MAX_DECIMAL_INT)]
    else:
        raise CodecError(f"malformed batch body: bad scale {scale!r:.20}")
    seqs: list[int | None] = [None] * len(ts) if seq_col is None else list(_undelta(seq_col, "seq"))
    if not len(ts) == len(vals) == len(seqs):
        raise CodecError(f"malformed batch body: column lengths differ in series {device}/{metric}")
    return [Reading(device, metric, t, v, s) for t, v, s in zip(ts, vals, seqs, strict=True)]


def _batch_from_body(body: Any, version: int, compression: str, replay: bool) -> Batch:
    if not isinstance(body, dict):
        raise CodecError("malformed batch body: body is not a map")
    series = _field(body, "series", list)
    readings: list[Reading] = []
    for entry in series:
        readings.extend(_series_readings(entry, version))
    n = _field(body, "n", int, len(readings) if version == 1 else None)
    if n != len(readings):
        raise CodecError(f"malformed batch body: header says {n} readings, series hold {len(readings)}")
    seq = _field(body, "seq", int)
    created_ms = _field(body, "created_ms", int)
    if not 0 <= seq <= _INT64_MAX or not INT_MIN <= created_ms <= _INT64_MAX:
        raise CodecError("malformed batch body: seq or created_ms out of range")
    stream = _field(body, "stream", str) if version >= 2 else ""
    if version >= 2 and not valid_id(stream):
        raise CodecError(f"malformed batch body: stream {stream!r:.80} is not an id")
    known = {"gw", "stream", "seq", "created_ms", "n", "series"}
    return Batch(
        gateway=_field(body, "gw", str),
        seq=seq,
        created_ms=created_ms,
        readings=readings,
        replay=replay,
        compression=compression,  # type: ignore[arg-type]
        extra={k: v for k, v in body.items() if k not in known},
        stream=stream,
        version=version,
    )


# ---------------------------------------------------------------- device payloads

def unpack_object(payload: bytes) -> Any:
    """Decode a msgpack payload sent by a device (no size blow-up: msgpack cannot expand)."""
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, TypeError, RecursionError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:  # TypeError: an array or map used as a map key
        raise CodecError(f"bad msgpack: {exc}") from exc
