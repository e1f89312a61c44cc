"""The golden file-transfer messages in tests/vectors/files/: the reference implementation encodes each
one to exactly its bytes and decodes it to exactly its fields, refuses each ``reject_*`` with its reason,
and a second minimal decoder written from docs/PROTOCOL.md ("File transfer") alone agrees."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from bridge.protocol.files import (
    FileRejected,
    Manifest,
    Receipt,
    decode_chunk,
    decode_manifest,
    decode_receipt,
    encode_chunk,
    encode_manifest,
    encode_receipt,
)
from bridge.protocol.records import FileStatus, Stamp, decode_control, encode_control, parse_control
from tests.vectors.files.make_vectors import DECODERS

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "files"
ALL = sorted(VECTORS.glob("*.bin"))


def _doc(vector: Path) -> dict[str, Any]:
    return dict(json.loads(vector.with_suffix(".json").read_text(encoding="utf-8")))


def _fields(doc: dict[str, Any], *drop: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("kind", *drop)}


def _reference(vector: Path, doc: dict[str, Any]) -> None:
    """Encode the fields: exactly the bytes; decode the bytes: exactly the fields."""
    payload = vector.read_bytes()
    kind = doc["kind"]
    if kind == "manifest":
        f = _fields(doc, "chunks")
        manifest = Manifest(**f | {"chunk_sha256": tuple(f["chunk_sha256"])})
        assert encode_manifest(manifest) == payload and decode_manifest(payload) == manifest
        assert manifest.chunks == doc["chunks"]
    elif kind == "chunk":
        data = bytes.fromhex(doc["data_hex"])
        assert encode_chunk(doc["file_id"], doc["index"], doc["offset"], data, resend=doc["resend"]) == payload
        chunk = decode_chunk(payload)
        assert (chunk.file_id, chunk.index, chunk.offset, len(chunk.data), chunk.sha256, chunk.resend, chunk.data) == (
            doc["file_id"], doc["index"], doc["offset"], doc["length"], doc["sha256"], doc["resend"], data)
        assert payload[:72].hex() == doc["header_hex"]
    elif kind == "receipt":
        receipt = Receipt(**_fields(doc) | {"missing": tuple(doc["missing"])})
        assert encode_receipt(receipt) == payload and decode_receipt(payload) == receipt
    else:
        assert kind == "file_status"
        status = FileStatus(**_fields(doc, "gw", "stream", "seq"))
        stamp = Stamp(doc["gw"], doc["seq"], doc["stream"])
        assert encode_control(status, stamp) == payload
        assert parse_control(decode_control(payload)).record == status
        assert parse_control(decode_control(payload)).stamp == stamp


@pytest.mark.parametrize("vector", ALL, ids=lambda p: p.stem)
def test_the_reference_encodes_and_decodes_every_vector_exactly(vector: Path) -> None:
    doc = _doc(vector)
    if "error" not in doc:
        _reference(vector, doc)
        return
    decode = DECODERS[doc["kind"]]
    with pytest.raises(FileRejected) as exc:
        decode(vector.read_bytes())
    assert exc.value.reason == doc["error"]


# ---------------------------------------------------------------- a decoder from docs/PROTOCOL.md alone

class Refused(Exception):
    pass


HEADER = ">4sBBH16sIQI32s"  # the table in PROTOCOL.md: magic, version, flags, reserved, id, index, offset, length, sha


def minimal_chunk(payload: bytes) -> dict[str, Any]:
    if len(payload) < 72:
        raise Refused("malformed")
    magic, version, flags, reserved, raw_id, index, offset, length, sha = struct.unpack(HEADER, payload[:72])
    if magic != b"EGFC":
        raise Refused("malformed")
    if version != 1:
        raise Refused("bad_version")
    if flags & 0xFE or reserved:
        raise Refused("malformed")
    data = payload[72:]
    if len(data) != length:
        raise Refused("malformed")
    if hashlib.sha256(data).digest() != sha:
        raise Refused("hash_mismatch")
    return {"kind": "chunk", "file_id": raw_id.hex(), "index": index, "offset": offset, "length": length,
            "sha256": sha.hex(), "resend": bool(flags & 1), "header_hex": payload[:72].hex(), "data_hex": data.hex()}


def minimal_json(payload: bytes, kind: str) -> dict[str, Any]:
    obj = json.loads(payload.decode("utf-8"))
    if type(obj.get("v")) is not int or obj["v"] != 1:
        raise Refused("bad_version")
    if kind == "manifest":
        name = obj["name"]
        if "/" in name or "\\" in name or name.startswith((".", "-")):
            raise Refused("bad_name")
        assert obj["chunks"] == -(-obj["size"] // obj["chunk_size"]) == len(obj["chunk_sha256"])
        return {"kind": kind, **{k: v for k, v in obj.items() if k != "v"}}
    missing: list[int] = []
    for first, last in obj.get("chunks", []):
        if not 0 <= first <= last:
            raise Refused("malformed")
        missing += range(first, last + 1)
    return {"kind": kind, "id": obj["id"], "state": obj["state"], "missing": sorted(set(missing)),
            "manifest": obj.get("manifest", False), "reason": obj.get("reason", ""), "sha256": obj.get("sha256"),
            "ts_ms": obj["ts_ms"]}


@pytest.mark.parametrize("vector", [p for p in ALL if not p.stem.startswith("file_status")], ids=lambda p: p.stem)
def test_a_decoder_written_from_the_doc_agrees(vector: Path) -> None:
    doc = _doc(vector)
    payload = vector.read_bytes()
    def decode() -> dict[str, Any]:
        return minimal_chunk(payload) if doc["kind"] == "chunk" else minimal_json(payload, doc["kind"])

    if "error" in doc:
        with pytest.raises(Refused, match=doc["error"]):
            decode()
        return
    assert decode() == doc


def test_the_vectors_cover_the_spec() -> None:
    names = {p.stem for p in ALL}
    assert {"manifest", "manifest_empty_file", "chunk_0", "chunk_1_resend", "chunk_2_last_short", "receipt_missing",
            "receipt_stored", "receipt_failed", "file_status_down_missing"} <= names
    assert sum(n.startswith("reject_") for n in names) >= 6
    assert _doc(VECTORS / "chunk_1_resend.bin")["resend"] is True
    assert _doc(VECTORS / "chunk_2_last_short.bin")["length"] < _doc(VECTORS / "manifest.bin")["chunk_size"]
    assert _doc(VECTORS / "manifest_empty_file.bin")["chunks"] == 0
    # the chunks put together are the file the manifest describes
    whole = b"".join(bytes.fromhex(_doc(VECTORS / f"{n}.bin")["data_hex"])
                     for n in ("chunk_0", "chunk_1_resend", "chunk_2_last_short"))
    assert hashlib.sha256(whole).hexdigest() == _doc(VECTORS / "manifest.bin")["sha256"]


def test_the_vectors_are_what_make_vectors_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.vectors.files import make_vectors

    monkeypatch.setattr(make_vectors, "HERE", tmp_path)
    make_vectors.main()
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in VECTORS.iterdir() if p.suffix in (".bin", ".json"))
    for name in made:
        assert (tmp_path / name).read_bytes() == (VECTORS / name).read_bytes(), name
