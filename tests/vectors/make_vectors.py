"""Regenerate the golden envelope files (see docs/PROTOCOL.md, "Golden vectors"):

    python -m tests.vectors.make_vectors

Version-1 envelopes can no longer be written by the codec: their ``.bin`` files are kept as they
are and only their ``.json`` is rewritten. Each ``*.bin`` has a ``*.json`` next to it: either the
decoded content, or ``{"error": ...}`` for an envelope that every decoder must refuse.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import msgpack

from bridge.protocol.codec import Batch, CodecError, Compression, decode_batch, encode_batch
from bridge.protocol.model import Reading

HERE = Path(__file__).resolve().parent
GW = "gw-test"
STREAM = "5f3a9c01d2e4b687"
CREATED = 1700000003000
T0 = 1700000000000

READINGS = [
    Reading("dev-0001", "temperature", 1700000000000, 21.37, 17),
    Reading("dev-0001", "temperature", 1700000001000, 21.4, 18),
    Reading("dev-0001", "temperature", 1700000002000, 21.38, 19),
    Reading("dev-0001", "humidity", 1700000000000, 45.5, 17),
    Reading("dev-0002", "current", 1700000000250, -0.125, None),
    Reading("dev-0002", "current", 1700000000750, 0.1, None),
    Reading("dev-0002", "ratio", 1700000000250, 0.3333333333333333, None),
]

# name -> (readings, compression, replay)
CASES: dict[str, tuple[list[Reading], Compression, bool]] = {
    "batch_v2_none": (READINGS, "none", False),
    "batch_v2_zlib": (READINGS, "zlib", False),
    "batch_v2_zlib_replay": (READINGS, "zlib", True),
    "batch_v2_zstd": (READINGS, "zstd", False),
    "batch_v2_empty": ([], "none", False),
    "batch_v2_single": ([Reading("d1", "m", T0, 1.5, 0)], "none", False),
    "batch_v2_scale0": ([Reading("d1", "count", T0 + 10 * i, float(v), None)
                         for i, v in enumerate([0, 7, 1000000, -3, 9007199254740992, -9007199254740992])],
                        "none", False),
    "batch_v2_scale6": ([Reading("d1", "x", T0 + i, v, i)
                         for i, v in enumerate([0.000001, 1.234567, -0.5, 9007199254.740992])], "none", False),
    "batch_v2_negative_deltas": ([Reading("d1", "t", ts, v, s) for ts, v, s in
                                  [(T0 + 5000, 30.25, 9), (T0 + 1000, 20.5, 4), (T0, -12.75, 0),
                                   (T0 + 3000, -12.8, 2)]],
                                 "none", False),
    "batch_v2_negative_zero": ([Reading("d1", "z", T0, -0.0, None), Reading("d1", "z", T0 + 1, 0.0, None),
                                Reading("d1", "z", T0 + 2, 1.25, None), Reading("d1", "w", T0, 0.0, None)],
                               "none", False),
    "batch_v2_huge": ([Reading("d1", "big", T0 + i, v, None) for i, v in enumerate([
        2**64 - 1, -(2**63), 2**53 + 1, 1e308, -1e308, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
    ])], "zlib", False),
}


def _doc(b: Batch) -> dict[str, Any]:
    return {
        "version": b.version, "gateway": b.gateway, "stream": b.stream if b.version >= 2 else None,
        "seq": b.seq, "created_ms": b.created_ms, "replay": b.replay, "compression": b.compression,
        "readings": [[r.device, r.metric, r.ts_ms, r.value, r.seq] for r in b.readings],
    }


def _write(name: str, envelope: bytes) -> None:
    (HERE / f"{name}.bin").write_bytes(envelope)
    try:
        doc = _doc(decode_batch(envelope))
    except CodecError as exc:
        doc = {"error": str(exc)}
    (HERE / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")


def _body(**extra: Any) -> dict[str, Any]:
    body = {"gw": GW, "stream": STREAM, "seq": 3, "created_ms": CREATED, "n": 1,
            "series": [["d1", "m", [T0], 1, [215], [5]]]}
    body.update(extra)
    return body


def _raw(body: dict[str, Any], flags: int = 0, version: int = 2, tail: bytes = b"") -> bytes:
    packed = msgpack.packb(body, use_bin_type=True)
    if flags & 0x0E == 0x02:
        packed = zlib.compress(packed)
    return bytes([version, flags]) + packed + tail


def main() -> None:
    for name in ("batch_v1_none", "batch_v1_zlib", "batch_v1_zlib_replay"):  # frozen version-1 files
        _write(name, (HERE / f"{name}.bin").read_bytes())
    for name, (readings, compression, replay) in CASES.items():
        _write(name, encode_batch(GW, 7, readings, stream=STREAM, created_ms=CREATED,
                                  compression=compression, replay=replay))
    # hand-built: what a decoder must accept (and ignore) and what it must refuse
    _write("accept_v2_unknown_key_and_long_series", _raw(_body(
        later={"x": 1}, series=[["d1", "m", [T0], 1, [215], [5], "a later element"]])))
    _write("reject_version_3", _raw(_body(), version=3))
    _write("reject_compression_3", _raw(_body(), flags=0x06))
    _write("reject_reserved_flag", _raw(_body(), flags=0x10))
    _write("reject_trailing_bytes_none", _raw(_body(), tail=b"\x00"))
    _write("reject_trailing_bytes_zlib", _raw(_body(), flags=0x02, tail=b"\x00"))
    _write("reject_v2_without_stream", _raw({k: v for k, v in _body().items() if k != "stream"}))
    _write("reject_v2_stream_not_an_id", _raw(_body(stream="../x")))
    _write("reject_n_mismatch", _raw(_body(n=2)))
    _write("reject_decimal_beyond_2_53", _raw(_body(series=[["d1", "m", [T0], 0, [2**53 + 1], None]])))
    _write("reject_scale_7", _raw(_body(series=[["d1", "m", [T0], 7, [1], None]])))
    _write("reject_column_lengths", _raw(_body(series=[["d1", "m", [T0, 1], 0, [1], None]])))


if __name__ == "__main__":
    main()
