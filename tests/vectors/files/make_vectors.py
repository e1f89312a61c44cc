"""Regenerate the golden file-transfer messages (docs/PROTOCOL.md, "File transfer golden vectors"):

    python -m tests.vectors.files.make_vectors

Each ``*.bin`` is one MQTT payload exactly as it goes on the wire; the ``*.json`` next to it holds its
decoded fields (``"kind"`` says which message it is), or ``{"kind": ..., "error": reason}`` for a
payload that every receiver must refuse with that reason. The file they describe is ``FILE`` below:
2500 bytes in chunks of 1024 (1024, 1024 and a short last chunk of 452).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from bridge.protocol.records import FileStatus, Stamp, encode_control

HERE = Path(__file__).resolve().parent
FILE_ID = "0123456789abcdef0123456789abcdef"
EMPTY_ID = "fedcba9876543210fedcba9876543210"
CHUNK_SIZE = 1024
FILE = bytes((i * i + 3 * i) % 251 for i in range(2500))  # period 251: no two chunks alike
PARTS = [FILE[i:i + CHUNK_SIZE] for i in range(0, len(FILE), CHUNK_SIZE)]
STAMP = Stamp("gw-test", 42, "5f3a9c01d2e4b687")

MANIFEST = Manifest(FILE_ID, "données-2024.csv", len(FILE), CHUNK_SIZE, hashlib.sha256(FILE).hexdigest(),
                    tuple(hashlib.sha256(p).hexdigest() for p in PARTS), "text/csv", {"site": "north", "n": 3},
                    1700000000000, "dev-0001")
EMPTY = Manifest(EMPTY_ID, "empty.txt", 0, 65536, hashlib.sha256(b"").hexdigest(), (), created_ms=1700000000001)
RECEIPTS = {
    "receipt_missing": Receipt(FILE_ID, "missing", (0, 2), manifest=True, ts_ms=1700000005000),
    "receipt_stored": Receipt(FILE_ID, "stored", sha256=MANIFEST.sha256, ts_ms=1700000006000),
    "receipt_failed": Receipt(FILE_ID, "failed", reason="too_large", ts_ms=1700000007000),
}
STATUSES = {
    "file_status_down_missing": FileStatus(FILE_ID, "down", "missing", "données-2024.csv", 2500, MANIFEST.sha256,
                                           missing=[[0, 0], [2, 2]], manifest=False),
    "file_status_down_received": FileStatus(FILE_ID, "down", "received", "données-2024.csv", 2500, MANIFEST.sha256,
                                            device="dev-0001", path="dev-0001/données-2024.csv"),
    "file_status_up_failed": FileStatus(EMPTY_ID, "up", "failed", "empty.txt", 0, EMPTY.sha256, reason="no_space"),
}

DECODERS: dict[str, Callable[[bytes], object]] = {"manifest": decode_manifest, "chunk": decode_chunk,
                                                  "receipt": decode_receipt}

def manifest_doc(m: Manifest) -> dict[str, Any]:
    return {"kind": "manifest", **{k: v for k, v in m.to_json().items() if k != "v"}}


def chunk_doc(payload: bytes) -> dict[str, Any]:
    c = decode_chunk(payload)
    return {"kind": "chunk", "file_id": c.file_id, "index": c.index, "offset": c.offset, "length": len(c.data),
            "sha256": c.sha256, "resend": c.resend, "header_hex": payload[:72].hex(), "data_hex": c.data.hex()}


def receipt_doc(r: Receipt) -> dict[str, Any]:
    return {"kind": "receipt", "id": r.id, "state": r.state, "missing": list(r.missing), "manifest": r.manifest,
            "reason": r.reason, "sha256": r.sha256, "ts_ms": r.ts_ms}


def status_doc(s: FileStatus) -> dict[str, Any]:
    return {"kind": "file_status", "gw": STAMP.gateway, "stream": STAMP.stream, "seq": STAMP.seq, **vars(s)}


def _write(name: str, payload: bytes, doc: dict[str, Any]) -> None:
    (HERE / f"{name}.bin").write_bytes(payload)
    (HERE / f"{name}.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _reject(name: str, kind: str, payload: bytes) -> None:
    decode = DECODERS[kind]
    try:
        decode(payload)
    except FileRejected as exc:
        _write(name, payload, {"kind": kind, "error": exc.reason})
        return
    raise AssertionError(f"{name} decodes")


def main() -> None:
    for name, m in (("manifest", MANIFEST), ("manifest_empty_file", EMPTY)):
        _write(name, encode_manifest(m), manifest_doc(m))
    for name, index, resend in (("chunk_0", 0, False), ("chunk_1_resend", 1, True), ("chunk_2_last_short", 2, False)):
        payload = encode_chunk(FILE_ID, index, index * CHUNK_SIZE, PARTS[index], resend=resend)
        _write(name, payload, chunk_doc(payload))
    for name, r in RECEIPTS.items():
        _write(name, encode_receipt(r), receipt_doc(r))
    for name, s in STATUSES.items():
        _write(name, encode_control(s, STAMP), status_doc(s))
    good = encode_chunk(FILE_ID, 2, 2048, PARTS[2])
    _reject("reject_chunk_magic", "chunk", b"EGFX" + good[4:])
    _reject("reject_chunk_version_2", "chunk", good[:4] + b"\x02" + good[5:])
    _reject("reject_chunk_reserved_flag", "chunk", good[:5] + b"\x02" + good[6:])
    _reject("reject_chunk_length", "chunk", good[:-1])
    _reject("reject_chunk_hash", "chunk", good[:-1] + bytes([good[-1] ^ 1]))
    _reject("reject_chunk_short_header", "chunk", good[:71])
    _reject("reject_manifest_traversal_name", "manifest",
            encode_manifest(Manifest(FILE_ID, "x", 0, 1024, EMPTY.sha256, ())).replace(b'"x"', b'"../x"'))
    _reject("reject_manifest_version_2", "manifest", encode_manifest(EMPTY).replace(b'"v":1', b'"v":2'))
    _reject("reject_receipt_bad_range", "receipt", encode_receipt(RECEIPTS["receipt_missing"])
            .replace(b"[[0,0],[2,2]]", b"[[2,0]]"))
    assert struct.calcsize(">4sBBH16sIQI32s") == 72


if __name__ == "__main__":
    main()
