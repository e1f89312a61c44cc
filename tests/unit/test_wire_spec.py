"""A second, minimal decoder of the telemetry envelope, written from docs/PROTOCOL.md alone (it does
not import bridge.protocol.codec), decodes every golden vector in tests/vectors/ to its JSON and refuses the
ones the spec says a decoder must refuse."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # the id grammar, as PROTOCOL.md writes it


class Refused(Exception):
    pass


def _body(envelope: bytes, versions: tuple[int, ...] = (1, 2)) -> tuple[int, bool, str, Any]:
    if len(envelope) < 2:
        raise Refused("short")
    version, flags = envelope[0], envelope[1]
    if version not in versions:
        raise Refused("unknown version")
    if flags & 0xF0:
        raise Refused("reserved flag bits")
    code = (flags >> 1) & 0x07
    data = envelope[2:]
    if code == 0:
        raw, compression = data, "none"
    elif code == 1:
        d = zlib.decompressobj()
        raw, compression = d.decompress(data), "zlib"
        if not d.eof or d.unused_data:
            raise Refused("zlib stream truncated or followed by bytes")
    elif code == 2:
        import zstandard

        size = zstandard.frame_content_size(data)
        obj = zstandard.ZstdDecompressor().decompressobj()
        raw, compression = obj.decompress(data), "zstd"
        if size < 0 or len(raw) != size or not obj.eof or obj.unused_data:
            raise Refused("zstd frame without content size, truncated or followed by bytes")
    else:
        raise Refused("unknown compression code")
    try:
        body = msgpack.unpackb(raw, raw=False)  # exactly one object: trailing bytes raise ExtraData
    except msgpack.ExtraData as exc:
        raise Refused("bytes after the body") from exc
    return version, bool(flags & 0x01), compression, body


def _running_sum(column: list[int], low: int, high: int) -> list[int]:
    out, acc = [], 0
    for delta in column:
        assert type(delta) is int
        acc += delta
        if not low <= acc <= high:
            raise Refused("running sum out of range")
        out.append(acc)
    return out


def minimal_decode(envelope: bytes) -> dict[str, Any]:
    version, replay, compression, body = _body(envelope)
    if version == 2 and not (isinstance(body.get("stream"), str) and ID.fullmatch(body["stream"])):
        raise Refused("version 2 without a stream id")
    readings = []
    for entry in body["series"]:
        device, metric, ts_col, scale, values, seq_col = entry[:6]  # later elements are ignored
        ts = _running_sum(ts_col, -(2**63), 2**63 - 1)
        if type(scale) is int and scale == -1:
            vals = [float(v) for v in values] if version == 1 else list(values)  # raw: taken as they are
        else:
            if type(scale) is not int or not 0 <= scale <= 6:
                raise Refused("bad scale")
            ints = _running_sum(values, -(2**53), 2**53)
            vals = [float(i) / float(10**scale) for i in ints]  # integer -> double first, then divide
        seqs = [None] * len(ts) if seq_col is None else _running_sum(seq_col, -(2**63), 2**63 - 1)
        if not len(ts) == len(vals) == len(seqs):
            raise Refused("column lengths differ")
        readings += [[device, metric, t, v, s] for t, v, s in zip(ts, vals, seqs, strict=True)]
    if body.get("n", len(readings)) != len(readings):
        raise Refused("n does not match")
    return {"version": version, "gateway": body["gw"], "stream": body["stream"] if version == 2 else None,
            "seq": body["seq"], "created_ms": body["created_ms"], "replay": replay, "compression": compression,
            "readings": readings}


@pytest.mark.parametrize("vector", sorted(VECTORS.glob("*.bin")), ids=lambda p: p.stem)
def test_minimal_decoder_agrees_with_every_golden_vector(vector: Path) -> None:
    expected = json.loads(vector.with_suffix(".json").read_text())
    if "error" in expected:
        with pytest.raises(Refused):
            minimal_decode(vector.read_bytes())
        return
    # json.dumps makes the comparison exact: floats by repr (every bit, sign of zero), ints by digits
    assert json.dumps(minimal_decode(vector.read_bytes())) == json.dumps(expected)


def test_a_consumer_that_knows_only_version_1_refuses_every_version_2_envelope() -> None:
    for vector in sorted(VECTORS.glob("batch_v2_*.bin")):
        with pytest.raises(Refused, match="unknown version"):
            _body(vector.read_bytes(), versions=(1,))
    _body((VECTORS / "batch_v1_zlib.bin").read_bytes(), versions=(1,))


def test_there_are_vectors_of_both_versions_and_of_refusals() -> None:
    names = [p.stem for p in VECTORS.glob("*.bin")]
    assert any(n.startswith("batch_v1") for n in names) and any(n.startswith("batch_v2") for n in names)
    assert sum(n.startswith("reject_") for n in names) >= 5
