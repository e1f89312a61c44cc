"""The file-transfer wire contract (bridge/protocol/files.py): every valid manifest, chunk and receipt
survives encode -> decode, and anything else (random bytes, mutated messages, hostile names) is refused
with a FileRejected whose reason is one of REJECT_REASONS, never another exception."""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.protocol.errors import InvalidRecord
from bridge.protocol.file_topics import FileTopics
from bridge.protocol.files import (
    CHUNK_HEADER,
    MAX_CHUNK_BYTES,
    MAX_CHUNKS,
    MIN_CHUNK_BYTES,
    RECEIPT_STATES,
    REJECT_REASONS,
    Chunk,
    FileRejected,
    Manifest,
    Receipt,
    check_chunk,
    check_name,
    chunk_count,
    decode_chunk,
    decode_manifest,
    decode_receipt,
    encode_chunk,
    encode_manifest,
    encode_receipt,
    from_ranges,
    new_file_id,
    to_ranges,
)
from bridge.protocol.records import FileStatus, Stamp, decode_control, encode_control, parse_control
from tests.vectors.files.make_vectors import DECODERS

HEX = "0123456789abcdef"
ids = st.text(HEX, min_size=32, max_size=32)
shas = st.text(HEX, min_size=64, max_size=64)
device_ids = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", fullmatch=True)
# ordinary names: letters (any script), digits, a few punctuation marks, in NFC by construction below
name_chars = st.characters(categories=("L", "N"), exclude_characters="\x00") | st.sampled_from(" _-.()+,=@")
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=20) | st.floats(
    allow_nan=False, allow_infinity=False)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10)


def _valid_name(raw: str) -> bool:
    try:
        check_name(raw)
    except FileRejected:
        return False
    return True


names = st.text(name_chars, min_size=1, max_size=40).filter(_valid_name)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    chunk_size = draw(st.integers(MIN_CHUNK_BYTES, MAX_CHUNK_BYTES))
    n = draw(st.integers(0, 40))
    size = 0 if n == 0 else (n - 1) * chunk_size + draw(st.integers(1, chunk_size))
    return Manifest(draw(ids), draw(names), size, chunk_size, draw(shas), tuple(draw(st.lists(shas, min_size=n,
                    max_size=n))), draw(st.text(st.characters(codec="utf-8"),
                                                min_size=1, max_size=40)),
                    draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
                    draw(st.integers(0, 2**63 - 1)), draw(st.none() | device_ids))


@st.composite
def receipts(draw: st.DrawFn) -> Receipt:
    state = draw(st.sampled_from(RECEIPT_STATES))
    missing = tuple(sorted(draw(st.sets(st.integers(0, MAX_CHUNKS - 1), max_size=50)))) if state == "missing" else ()
    return Receipt(draw(ids), state, missing, state == "missing" and draw(st.booleans()),
                   draw(st.text(st.characters(codec="utf-8"), max_size=200)),
                   draw(st.none() | shas), draw(st.integers(-(2**63), 2**63 - 1)))


def _refused(kind: str, payload: bytes) -> None:
    """Decoding ``payload`` either succeeds or raises FileRejected with a documented reason."""
    reason = None
    try:
        DECODERS[kind](payload)
    except FileRejected as exc:
        reason = exc.reason
    assert reason is None or reason in REJECT_REASONS, reason


# ------------------------------------------------------------------ round trips

@given(manifests())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_every_valid_manifest_round_trips(manifest: Manifest) -> None:
    payload = encode_manifest(manifest)
    assert decode_manifest(payload) == manifest
    assert encode_manifest(decode_manifest(payload)) == payload  # one canonical form


@given(ids, st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=3000), st.booleans())
def test_every_chunk_round_trips(file_id: str, index: int, offset: int, data: bytes, resend: bool) -> None:
    payload = encode_chunk(file_id, index, offset, data, resend=resend)
    assert len(payload) == CHUNK_HEADER.size + len(data) == 72 + len(data)
    assert decode_chunk(payload) == Chunk(file_id, index, offset, data, hashlib.sha256(data).hexdigest(), resend)
    digest = hashlib.sha256(data).digest()
    assert encode_chunk(file_id, index, offset, data, resend=resend, sha256=digest) == payload


@given(receipts())
def test_every_valid_receipt_round_trips(receipt: Receipt) -> None:
    assert decode_receipt(encode_receipt(receipt)) == receipt


@given(st.sets(st.integers(0, MAX_CHUNKS - 1), max_size=300))
def test_ranges_round_trip_and_are_minimal(indexes: set[int]) -> None:
    ranges = to_ranges(indexes)
    assert from_ranges(ranges) == sorted(indexes)
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(ranges))  # disjoint, not adjacent


@given(st.lists(st.tuples(st.integers(0, MAX_CHUNKS - 1), st.integers(0, 200)), max_size=40))
def test_overlapping_ranges_give_each_index_once(pairs: list[tuple[int, int]]) -> None:
    ranges = [[a, min(a + n, MAX_CHUNKS - 1)] for a, n in pairs]
    expected = sorted({i for a, b in ranges for i in range(a, b + 1)})
    assert from_ranges(ranges) == expected


def test_many_overlapping_ranges_are_cheap() -> None:
    receipt = {"v": 1, "id": "0" * 32, "state": "missing", "chunks": [[0, MAX_CHUNKS - 1]] * 20000}
    assert decode_receipt(json.dumps(receipt).encode()).missing == tuple(range(MAX_CHUNKS))


@pytest.mark.parametrize("ranges", [{}, [[1]], [[2, 1]], [[-1, 0]], [[0, MAX_CHUNKS]], [[True, 1]], [[0, 1.0]],
                                    [[0, 10**30]], ["0-1"]])
def test_bad_ranges_are_malformed(ranges: Any) -> None:
    with pytest.raises(FileRejected) as exc:
        from_ranges(ranges)
    assert exc.value.reason == "malformed"


def test_new_file_ids_are_fresh_hex() -> None:
    made = {new_file_id() for _ in range(100)}
    assert len(made) == 100 and all(len(i) == 32 and set(i) <= set(HEX) for i in made)


def test_file_status_is_a_control_record_that_round_trips() -> None:
    status = FileStatus("ab" * 16, "down", "missing", "x.bin", 5000, "0" * 64, "", [[0, 2], [4, 4]], True, None)
    wire = decode_control(encode_control(status, Stamp("gw-1", 9, "5f3a9c01d2e4b687")))
    assert wire["kind"] == "file_status"
    assert parse_control(wire).record == status


# ------------------------------------------------------------------ hostile input

@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_arbitrary_bytes_are_refused_only_with_a_reason(payload: bytes) -> None:
    for kind in DECODERS:
        _refused(kind, payload)


def _valid_manifest_json() -> dict[str, Any]:
    data = b"x" * 2500
    hashes = tuple(hashlib.sha256(data[i:i + 1024]).hexdigest() for i in (0, 1024, 2048))
    manifest = Manifest("ab" * 16, "report.csv", 2500, 1024, hashlib.sha256(data).hexdigest(), hashes)
    obj: dict[str, Any] = json.loads(encode_manifest(manifest))
    return obj


HOSTILE_VALUES: list[Any] = [None, True, 1.0, -1, 2**64, 10**400, "", "x" * 300, [], {}, [[[[]]]], "\ud800",
                             float("nan"), 1e308]


@given(st.sampled_from(sorted(_valid_manifest_json())), st.sampled_from(HOSTILE_VALUES))
def test_a_manifest_with_any_field_replaced_is_refused_with_a_reason(key: str, value: Any) -> None:
    obj = _valid_manifest_json() | {key: value}
    _refused("manifest", json.dumps(obj).encode())  # json.dumps spells NaN and lone surrogates as they come


@pytest.mark.parametrize("text", [
    b'{"v":1,"id":"' + b"a" * 32 + b'","state":"failed","reason":"\\ud800"}',  # a lone surrogate
    b'{"v":1,"id":"' + b"a" * 32 + b'","state":"stored","x":1e400}',  # beyond the doubles
    b'{"v":1,"id":"' + b"a" * 32 + b'","state":"stored","x":NaN}',
    b'{"v":1.0,"id":"' + b"a" * 32 + b'","state":"stored"}',
    b'{"v":true,"id":"' + b"a" * 32 + b'","state":"stored"}',
    b'{"v":2,"id":"' + b"a" * 32 + b'","state":"stored"}',
    b'{"v":1,"id":"' + b"a" * 32 + b'","state":"stored","ts_ms":' + b"9" * 5000 + b"}",  # beyond int digits
    b"[" * 100000 + b"]" * 100000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b"\xff\xfe{}",
])
def test_hostile_receipts_are_refused(text: bytes) -> None:
    with pytest.raises(FileRejected) as exc:
        decode_receipt(text)
    assert exc.value.reason in ("malformed", "bad_version")


def test_a_manifest_with_hostile_meta_or_content_type_is_malformed() -> None:
    base = json.dumps(_valid_manifest_json(), separators=(",", ":"))
    for mutated in (base.replace('"meta":{}', '"meta":{"x":1e400}'),
                    base.replace('"meta":{}', '"meta":{"x":"\\udc00"}'),
                    base.replace('"content_type":"application/octet-stream"', '"content_type":"\\ud800"'),
                    base.replace('"meta":{}', '"meta":{"x":"' + "y" * 5000 + '"}')):
        assert mutated != base
        with pytest.raises(FileRejected) as exc:
            decode_manifest(mutated.encode())
        assert exc.value.reason == "malformed"


@given(st.data())
@settings(max_examples=300)
def test_mutated_valid_messages_are_refused_only_with_a_reason(data: st.DataObject) -> None:
    chunk = encode_chunk("cd" * 16, 2, 2048, b"payload bytes", resend=True)
    kind, valid = data.draw(st.sampled_from([("chunk", chunk), ("manifest", json.dumps(_valid_manifest_json())
                                                                   .encode()),
                                             ("receipt", encode_receipt(Receipt("ab" * 16, "missing", (1, 2, 9))))]))
    how = data.draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
    at = data.draw(st.integers(0, len(valid) - 1))
    if how == "truncate":
        mutated = valid[:at]
    elif how == "flip":
        mutated = valid[:at] + bytes([valid[at] ^ (1 << data.draw(st.integers(0, 7)))]) + valid[at + 1:]
    elif how == "insert":
        mutated = valid[:at] + data.draw(st.binary(min_size=1, max_size=8)) + valid[at:]
    else:
        mutated = valid[:at] + valid[at + 1:]
    _refused(kind, mutated)


def _header(**fields: Any) -> bytes:
    values = {"magic": b"EGFC", "version": 1, "flags": 0, "reserved": 0, "id": bytes(16), "index": 0, "offset": 0,
              "length": 3, "sha": hashlib.sha256(b"abc").digest()} | fields
    return struct.pack(">4sBBH16sIQI32s", *values.values()) + b"abc"


@pytest.mark.parametrize(("header", "reason"), [
    (_header(), None),
    (_header(magic=b"EGFD"), "malformed"),
    (_header(version=2), "bad_version"),
    (_header(version=0), "bad_version"),
    (_header(flags=0x02), "malformed"),
    (_header(flags=0x80), "malformed"),
    (_header(reserved=1), "malformed"),
    (_header(length=2), "malformed"),
    (_header(length=4), "malformed"),
    (_header(length=2**32 - 1), "malformed"),
    (_header(sha=bytes(32)), "hash_mismatch"),
    (_header()[:71], "malformed"),
    (_header()[:-1], "malformed"),
    (_header() + b"d", "malformed"),
])
def test_chunk_header_fields_are_checked(header: bytes, reason: str | None) -> None:
    if reason is None:
        assert decode_chunk(header).data == b"abc"
        return
    with pytest.raises(FileRejected) as exc:
        decode_chunk(header)
    assert exc.value.reason == reason


def test_check_chunk_places_a_chunk_against_its_manifest() -> None:
    data = bytes(range(251)) * 10 + bytes(50)  # 2560 bytes: chunks of 1024, 1024, 512, all different
    parts = [data[:1024], data[1024:2048], data[2048:]]
    m = Manifest("ab" * 16, "f.bin", len(data), 1024, hashlib.sha256(data).hexdigest(),
                 tuple(hashlib.sha256(p).hexdigest() for p in parts))
    for i, part in enumerate(parts):
        check_chunk(m, decode_chunk(encode_chunk(m.id, i, i * 1024, part)))
    cases = [("cd" * 16, 0, 0, parts[0], "unknown_file"), (m.id, 3, 3072, b"x", "bad_chunk"),
             (m.id, 1, 1000, parts[1], "bad_chunk"), (m.id, 2, 2048, parts[2] + b"x", "bad_chunk"),
             (m.id, 1, 1024, parts[0], "hash_mismatch")]
    for file_id, index, offset, part, reason in cases:
        with pytest.raises(FileRejected) as exc:
            check_chunk(m, decode_chunk(encode_chunk(file_id, index, offset, part)))
        assert exc.value.reason == reason


def test_manifest_limits() -> None:
    obj = _valid_manifest_json()
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"size": 2500}, 2499, "too_large"), ({"chunk_size": 512}, 0, "malformed"),
        ({"chunk_size": MAX_CHUNK_BYTES + 1}, 0, "too_large"), ({"chunks": 2}, 0, "malformed"),
        ({"size": MIN_CHUNK_BYTES * (MAX_CHUNKS + 1), "chunk_size": MIN_CHUNK_BYTES}, 0, "too_large"),
        ({"id": "AB" * 16}, 0, "bad_id"), ({"id": "ab" * 15}, 0, "bad_id"), ({"name": "../x"}, 0, "bad_name"),
        ({"device": "a/b"}, 0, "malformed"), ({"sha256": "A" * 64}, 0, "malformed"),
        ({"created_ms": -1}, 0, "malformed"), ({"chunk_sha256": ["0" * 64] * 2}, 0, "malformed")]
    for change, max_size, reason in cases:
        with pytest.raises(FileRejected) as exc:
            decode_manifest(json.dumps(obj | change).encode(), max_size=max_size or 2**62)
        assert exc.value.reason == reason, change
    assert decode_manifest(json.dumps(obj).encode(), max_size=2500).size == 2500
    assert chunk_count(0, 1024) == 0 and chunk_count(1024, 1024) == 1 and chunk_count(1025, 1024) == 2


# ------------------------------------------------------------------ names

HOSTILE_NAMES = ["../x", "..", ".", "a/b", "/etc/passwd", "a\\b", "..\\x", ".hidden", "-rf", "--help", "a\x00b",
                 "a\nb", "a\tb", "\x7f", "evil\u202etxt.exe", "a\u200bb", "a\u2028b", "x" * 256, "é" * 128,
                 "e\u0301", "con", "CON.txt", "con.txt", "nul", "Com1.log", "lpt9", "aux.tar.gz", "prn", "name ",
                 " name", "\u00a0name", "", "\ud800.bin"]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(FileRejected) as exc:
        check_name(name)
    assert exc.value.reason == "bad_name"


@pytest.mark.parametrize("name", [None, 5, b"x", ["x"]])
def test_names_that_are_not_strings_are_refused(name: object) -> None:
    with pytest.raises(FileRejected, match="bad_name"):
        check_name(name)


@pytest.mark.parametrize("name", ["report.csv", "a", "x" * 255, "é" * 127, "données 2024.tar.gz", "日本語.txt",
                                  "Ünïcödé (copy 2).pdf", "a..b", "console.log", "con2.txt", "my-file_1",
                                  "Ελληνικά", "emoji😀.png"])
def test_ordinary_names_are_accepted(name: str) -> None:
    assert check_name(name) == name


@given(st.text(max_size=300))
@settings(max_examples=500)
def test_an_accepted_name_is_one_safe_path_component(name: str) -> None:
    reason = None
    try:
        check_name(name)
    except FileRejected as exc:
        reason = exc.reason
    if reason is not None:
        assert reason == "bad_name"
        return
    assert name not in (".", "..") and "/" not in name and "\\" not in name and "\x00" not in name
    assert not name.startswith((".", "-")) and name == name.strip()
    assert len(name.encode("utf-8")) <= 255 and unicodedata.is_normalized("NFC", name)
    assert not any(c < " " or c == "\x7f" or unicodedata.category(c) in ("Cf", "Cs", "Zl", "Zp") for c in name)


def test_topics_are_built_and_parsed() -> None:
    topics, file_id = FileTopics("edge/gw-1"), "ab" * 16
    for direction in ("up", "down"):
        for part, topic in (("manifest", topics.manifest(direction, file_id)),
                            ("chunk", topics.chunk(direction, file_id)),
                            ("receipt", topics.receipt(direction, file_id))):
            assert topic == f"edge/gw-1/files/{direction}/{file_id}/{part}"
            assert topics.parse(topic) == (direction, file_id, part)
    assert topics.filter("up", "chunk") == "edge/gw-1/files/up/+/chunk"
    for other in ("edge/gw-2/files/up/x/chunk", "edge/gw-1/files/sideways/x/chunk", "edge/gw-1/files/up/x/y/chunk",
                  "edge/gw-1/files/status", "edge/gw-1/files/up/x/data"):
        assert topics.parse(other) is None
    with pytest.raises(FileRejected, match="bad_id"):
        topics.chunk("up", "../../x")


@pytest.mark.parametrize(("change", "ok"), [({}, True), ({"id": "../../etc"}, False), ({"id": "AB" * 16}, False),
                                            ({"direction": "sideways"}, False), ({"state": ""}, False)])
def test_a_file_status_record_names_a_file_id_and_a_direction(change: dict[str, Any], ok: bool) -> None:
    wire = decode_control(encode_control(FileStatus("ab" * 16, "up", "sent"), Stamp("gw-1", 1))) | change
    if ok:
        assert parse_control(wire).record == FileStatus("ab" * 16, "up", "sent")
        return
    with pytest.raises(InvalidRecord, match="malformed record"):
        parse_control(wire)
