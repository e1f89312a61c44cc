from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.protocol.codec import (
    INT_MIN,
    UINT_MAX,
    Batch,
    CodecError,
    Compression,
    carried,
    decode_batch,
    encode_batch,
    is_replay,
    set_replay,
    unpack_object,
    zstd_available,
)
from bridge.protocol.model import Reading, Value

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def _readings() -> list[Reading]:
    return [
        Reading("dev-0001", "temperature", 1700000000000, 21.37, 1),
        Reading("dev-0001", "temperature", 1700000001000, 21.41, 2),
        Reading("dev-0001", "humidity", 1700000000000, 45.2, 1),
        Reading("dev-0002", "temperature", 1700000000500, -3.5, None),
        Reading("dev-0002", "pressure", 1700000000500, 1.0 / 3.0, None),
    ]


@pytest.mark.parametrize("compression", ["none", "zlib", *(["zstd"] if zstd_available() else [])])
def test_round_trip_keeps_every_reading_exactly(compression: Compression) -> None:
    readings = _readings()
    env = encode_batch("gw-1", 42, readings, stream="s1", created_ms=1700000002000, compression=compression)
    batch = decode_batch(env)
    assert batch.gateway == "gw-1"
    assert batch.seq == 42
    assert batch.created_ms == 1700000002000
    assert batch.replay is False
    assert sorted(batch.readings) == sorted(readings)


def test_random_values_round_trip_bit_exact() -> None:
    rng = random.Random(7)
    readings = [
        Reading("d", "m", 1_700_000_000_000 + i * rng.randint(0, 5000), v, i)
        for i, v in enumerate([rng.uniform(-1e6, 1e6) for _ in range(300)]
                              + [round(rng.gauss(20, 5), 2) for _ in range(300)])
    ]
    out = decode_batch(encode_batch("g", 1, readings, stream="s1", created_ms=0)).readings
    assert out == readings  # same order within one series, same float bits


def test_decimal_values_are_stored_as_scaled_integers() -> None:
    flat = [Reading("d", "t", 1_700_000_000_000 + 1000 * i, round(20 + 0.01 * (i % 7), 2), i) for i in range(1000)]
    size = len(encode_batch("g", 1, flat, stream="s1", created_ms=0))
    assert size / len(flat) < 3.0, size


def test_replay_flag_is_set_without_touching_the_body() -> None:
    env = encode_batch("g", 1, _readings(), stream="s1", created_ms=0)
    replayed = set_replay(env)
    assert is_replay(replayed) and not is_replay(env)
    assert replayed[2:] == env[2:]
    assert decode_batch(replayed).replay is True
    assert set_replay(replayed, False) == env


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter"),
        (b"\x03\x00", "version"),
        (b"\x00\x00", "version"),
        (b"\x01\x0e", "flags"),
        (b"\x01\x02not zlib", "zlib"),
        (b"\x01\x00\xc1", "msgpack"),
        (b"\x01\x00\x93\x01\x02\x03", "not a map"),
    ],
)
def test_malformed_envelopes_raise_codec_error(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_batch(data)


def test_decompression_bomb_is_refused() -> None:
    import zlib

    bomb = b"\x01\x02" + zlib.compress(b"\x00" * (2 * 1024 * 1024))
    with pytest.raises(CodecError, match="exceeds"):
        decode_batch(bomb, max_body_bytes=1024 * 1024)


def test_empty_batch_round_trips() -> None:
    batch = decode_batch(encode_batch("g", 1, [], stream="s1", created_ms=0))
    assert batch.readings == [] and batch.stream == "s1" and batch.version == 2


def _expected_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.with_suffix(".json").read_text()))


def _as_golden(batch: Batch) -> dict[str, Any]:
    return {
        "version": batch.version, "gateway": batch.gateway, "stream": batch.stream if batch.version >= 2 else None,
        "seq": batch.seq, "created_ms": batch.created_ms, "replay": batch.replay, "compression": batch.compression,
        "readings": [[r.device, r.metric, r.ts_ms, r.value, r.seq] for r in batch.readings],
    }


@pytest.mark.parametrize("vector", sorted(VECTORS.glob("*.bin")), ids=lambda p: p.stem)
def test_golden_vectors_decode_to_their_json(vector: Path) -> None:
    expected = _expected_json(vector)
    if "error" in expected:
        with pytest.raises(CodecError):
            decode_batch(vector.read_bytes())
        return
    # json.dumps compares exactly: repr of a float keeps every bit and the sign of zero
    assert json.dumps(_as_golden(decode_batch(vector.read_bytes()))) == json.dumps(expected)


def test_golden_vectors_cover_the_spec_and_uncompressed_ones_encode_byte_for_byte() -> None:
    names = {p.stem for p in VECTORS.glob("*.bin")}
    assert {"batch_v1_none", "batch_v2_zstd", "batch_v2_scale0", "batch_v2_scale6", "batch_v2_negative_deltas",
            "batch_v2_negative_zero", "batch_v2_huge", "batch_v2_empty", "batch_v2_single"} <= names
    for name in ("batch_v2_none", "batch_v2_empty", "batch_v2_single", "batch_v2_scale0", "batch_v2_scale6",
                 "batch_v2_negative_deltas", "batch_v2_negative_zero"):
        exp = _expected_json(VECTORS / f"{name}.bin")
        readings = [Reading(d, m, t, v, s) for d, m, t, v, s in exp["readings"]]
        env = encode_batch(exp["gateway"], exp["seq"], readings, stream=exp["stream"], created_ms=exp["created_ms"],
                           compression="none", replay=exp["replay"])
        assert env == (VECTORS / f"{name}.bin").read_bytes(), name


def test_version_1_envelopes_still_decode_and_can_be_flagged_replay() -> None:
    v1 = (VECTORS / "batch_v1_zlib.bin").read_bytes()
    batch = decode_batch(set_replay(v1))
    assert batch.version == 1 and batch.stream == "" and batch.replay
    assert len(batch.readings) == 7


# ---------------------------------------------------------------- value-exact by construction

finite_doubles = st.floats(allow_nan=False, allow_infinity=False)
wide_ints = st.integers(min_value=INT_MIN, max_value=UINT_MAX)
values = st.one_of(finite_doubles, wide_ints, st.sampled_from([-0.0, 0.0, 1e308, -1e308, 5e-324, -5e-324,
                                                               2.2250738585072014e-308, 2**53, 2**53 + 1]))


def _same(a: Value, b: Value) -> bool:
    """Same type and same bits (repr of a float is exact and keeps the sign of zero)."""
    return type(a) is type(b) and repr(a) == repr(b)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), values), max_size=40),
       st.sampled_from(["none", "zlib"]))
def test_every_carried_value_round_trips_bit_exactly(rows: list[tuple[str, Value]],
                                                    compression: Compression) -> None:
    readings = []
    for i, (metric, raw) in enumerate(rows):
        value = carried(raw)
        assert value is not None  # every finite double and every int64/uint64 is carried
        assert value == raw
        readings.append(Reading("d", metric, 1_700_000_000_000 + i, value, i))
    env = encode_batch("g", 9, readings, stream="s1", created_ms=0, compression=compression)
    out = decode_batch(env).readings
    assert sorted(out, key=lambda r: r.seq or 0) == readings
    for got, want in zip(sorted(out, key=lambda r: r.seq or 0), readings, strict=True):
        assert _same(got.value, want.value), (got.value, want.value)


@given(finite_doubles)
def test_every_double_round_trips_alone(value: float) -> None:
    out = decode_batch(encode_batch("g", 1, [Reading("d", "m", 0, value)], stream="s", created_ms=0)).readings
    assert _same(out[0].value, value)


@given(wide_ints)
def test_every_int64_and_uint64_round_trips_exactly(value: int) -> None:
    kept = carried(value)
    assert kept == value
    out = decode_batch(encode_batch("g", 1, [Reading("d", "m", 0, kept)], stream="s", created_ms=0)).readings
    assert out[0].value == value and _same(out[0].value, kept)


@given(st.one_of(st.integers(max_value=INT_MIN - 1), st.integers(min_value=UINT_MAX + 1),
                 st.sampled_from([math.nan, math.inf, -math.inf])))
def test_values_no_batch_can_carry_are_refused_one_by_one(value: float) -> None:
    assert carried(value) is None


def test_a_series_that_cannot_use_the_decimal_form_falls_back_alone() -> None:
    readings = [Reading("d", "plain", 1, 21.5), Reading("d", "plain", 2, 21.75),
                Reading("d", "neg0", 1, -0.0), Reading("d", "neg0", 2, 1.0),
                Reading("d", "huge", 1, 1e308), Reading("d", "big", 1, 2**64 - 1)]
    env = encode_batch("g", 1, readings, stream="s", created_ms=0, compression="none")
    scales = {entry[1]: entry[3] for entry in unpack_object(env[2:])["series"]}
    assert scales == {"plain": 2, "neg0": -1, "huge": -1, "big": -1}
    assert [repr(r.value) for r in decode_batch(env).readings] == [repr(r.value) for r in readings]


def test_the_batch_that_once_failed_on_one_huge_value_encodes() -> None:
    readings = [Reading(f"d{i}", "flow", i, float(i) / 10) for i in range(50)] + [Reading("d5", "flow", 99, 1e308)]
    out = decode_batch(encode_batch("g", 1, readings, stream="s", created_ms=0)).readings
    assert sorted(out) == sorted(readings)


@given(st.lists(st.one_of(st.integers(-(10**6), 10**6).flatmap(
    lambda i: st.sampled_from([i / 10**s for s in range(8)])), finite_doubles), min_size=1, max_size=20))
def test_the_decimal_form_uses_the_smallest_exact_scale(raw: list[float]) -> None:
    readings = [Reading("d", "m", i, v) for i, v in enumerate(raw)]
    env = encode_batch("g", 1, readings, stream="s", created_ms=0, compression="none")
    scale = unpack_object(env[2:])["series"][0][3]
    decimal = [s for s in range(7) if all(
        math.copysign(1.0, v) > 0 or v != 0 for v in raw) and all(
        abs(v) <= 2**53 and abs(round(v * 10**s)) <= 2**53 and round(v * 10**s) / 10**s == v for v in raw)]
    assert scale == (decimal[0] if decimal else -1)
    assert [repr(r.value) for r in decode_batch(env).readings] == [repr(v) for v in raw]


envelope_bodies = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=7), st.dictionaries(
        st.sampled_from(["gw", "stream", "seq", "created_ms", "n", "series", "x"]), inner, max_size=7)),
    max_leaves=40)


def msgpack_pack(obj: Any) -> bytes:
    try:
        return bytes(msgpack.packb(obj, use_bin_type=True))
    except (OverflowError, ValueError):
        return b"\xc0"


_GOOD = encode_batch("g", 1, [Reading("d", "m", i, i / 10, i) for i in range(20)] + [Reading("d", "z", 0, -0.0)],
                     stream="s", created_ms=0, compression="none")


def _mutated(cut: int, flip: int) -> bytes:
    """A valid uncompressed envelope truncated and with one byte changed."""
    data = bytearray(_GOOD[: max(2, cut)])
    pos = flip % len(data)
    data[pos] = (data[pos] + 1 + flip // len(data)) % 256
    return bytes(data)


@given(st.one_of(
    st.binary(max_size=300),
    st.builds(lambda v, f, body: bytes([v, f]) + bytes(msgpack_pack(body)),
              st.sampled_from([1, 2, 3]), st.integers(0, 255), envelope_bodies),
    st.builds(_mutated, st.integers(0, 400), st.integers(0, 10_000)),
))
def test_decode_batch_refuses_anything_malformed_with_a_codec_error_only(data: bytes) -> None:
    try:
        batch = decode_batch(data, max_body_bytes=1 << 20)
    except CodecError:
        return
    assert all(type(r.ts_ms) is int and (r.seq is None or type(r.seq) is int) for r in batch.readings)
    assert all(carried(r.value) is not None for r in batch.readings)  # decoded values are carriable again
