from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from bridge.codec import (
    CodecError,
    decode_batch,
    decode_control,
    encode_batch,
    encode_control,
    is_replay,
    set_replay,
    zstd_available,
)
from bridge.model import Reading

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
def test_round_trip_keeps_every_reading_exactly(compression: str) -> None:
    readings = _readings()
    env = encode_batch("gw-1", 42, readings, created_ms=1700000002000, compression=compression)  # type: ignore[arg-type]
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
    out = decode_batch(encode_batch("g", 1, readings, created_ms=0)).readings
    assert out == readings  # same order within one series, same float bits


def test_decimal_values_are_stored_as_scaled_integers() -> None:
    flat = [Reading("d", "t", 1_700_000_000_000 + 1000 * i, round(20 + 0.01 * (i % 7), 2), i) for i in range(1000)]
    size = len(encode_batch("g", 1, flat, created_ms=0))
    assert size / len(flat) < 3.0, size


def test_replay_flag_is_set_without_touching_the_body() -> None:
    env = encode_batch("g", 1, _readings(), created_ms=0)
    replayed = set_replay(env)
    assert is_replay(replayed) and not is_replay(env)
    assert replayed[2:] == env[2:]
    assert decode_batch(replayed).replay is True
    assert set_replay(replayed, False) == env


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter"),
        (b"\x02\x00", "version"),
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


def test_empty_batch_is_refused() -> None:
    with pytest.raises(CodecError):
        encode_batch("g", 1, [], created_ms=0)


def test_control_records_are_strict_json() -> None:
    rec = {"kind": "alert", "value": 1.5, "gw": "g", "seq": 3}
    assert decode_control(encode_control(rec)) == rec
    with pytest.raises(ValueError, match="JSON compliant"):
        encode_control({"value": math.nan})
    with pytest.raises(CodecError):
        decode_control(b"[1]")


def _expected_json(path: Path) -> dict[str, object]:
    return json.loads(path.with_suffix(".json").read_text())


@pytest.mark.parametrize("vector", sorted(VECTORS.glob("*.bin")), ids=lambda p: p.stem)
def test_golden_vectors_decode_to_their_json(vector: Path) -> None:
    expected = _expected_json(vector)
    batch = decode_batch(vector.read_bytes())
    got = {
        "gateway": batch.gateway,
        "seq": batch.seq,
        "created_ms": batch.created_ms,
        "replay": batch.replay,
        "compression": batch.compression,
        "readings": [[r.device, r.metric, r.ts_ms, r.value, r.seq] for r in batch.readings],
    }
    assert got == expected


def test_golden_vectors_exist_and_uncompressed_one_encodes_byte_for_byte() -> None:
    files = sorted(VECTORS.glob("*.bin"))
    assert len(files) >= 3
    plain = VECTORS / "batch_v1_none.bin"
    exp = _expected_json(plain)
    readings = [Reading(d, m, t, v, s) for d, m, t, v, s in exp["readings"]]  # type: ignore[union-attr]
    env = encode_batch(str(exp["gateway"]), int(exp["seq"]), readings, created_ms=int(exp["created_ms"]),  # type: ignore[call-overload]
                       compression="none", replay=bool(exp["replay"]))
    assert env == plain.read_bytes()
