"""docs/PROTOCOL.md "File transfer" says what the code does: the chunk header table is the struct the
code packs, the limits and reasons are the code's constants, the key tables list the keys the code
writes, and the annotated hex dump and examples are the golden vectors' bytes."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from bridge.protocol import files
from bridge.protocol.files import CHUNK_HEADER, RECEIPT_STATES, REJECT_REASONS, Manifest, Receipt, encode_receipt
from bridge.protocol.records import FileStatus

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors" / "files"
SECTION = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8").split("\n## File transfer\n", 1)[1]
TYPES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q"}


def part(title: str) -> str:
    return SECTION.split(f"\n### {title}\n", 1)[1].split("\n### ", 1)[0]


def rows(text: str) -> list[list[str]]:
    """The cells of each table row, header and rule rows left out."""
    out = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            out.append([c.strip() for c in line.strip("|").split("|")])
    return out[1:] if out else out


def first_keys(text: str, table: int = 0) -> list[str]:
    """The backticked names in the first column of the ``table``-th table of ``text``."""
    tables = [t for t in re.split(r"\n(?!\|)[^\n]*\n", text) if t.lstrip().startswith("|")]
    return [key for row in rows(tables[table]) for key in re.findall(r"`([a-z_0-9]+)`", row[0])]


def test_the_header_table_is_the_struct_the_code_packs() -> None:
    table = [r for r in rows(part("Chunk")) if r[0].isdigit()]
    fmt, at = ">", 0
    for offset, size, kind, _field, _meaning in table[:-1]:  # the last row is the data
        assert int(offset) == at
        fmt += TYPES.get(kind, f"{size}s")
        at += int(size)
    assert fmt == CHUNK_HEADER.format and at == CHUNK_HEADER.size == int(table[-1][0]) == 72
    assert f"`{CHUNK_HEADER.format}`" in part("Chunk")
    assert f"`{' '.join(f'{b:02x}' for b in files.CHUNK_MAGIC)}` (ASCII `{files.CHUNK_MAGIC.decode()}`)" in SECTION
    assert f"bit 0 (`0x{files.FLAG_RESEND:02x}`) *resend*" in SECTION


def test_the_annotated_hex_dump_is_the_vector() -> None:
    dump = part("Chunk").split("```\n", 2)[1]
    shown = "".join(re.match(r"((?:[0-9a-f]{2} )+)", line + " ").group(1)  # type: ignore[union-attr]
                    for line in dump.splitlines() if not line.startswith("d6 2f"))
    payload = (VECTORS / "chunk_2_last_short.bin").read_bytes()
    assert bytes.fromhex(shown) == payload[:72]
    assert payload[72:76].hex(" ") in dump and f"message: {len(payload)} bytes" in dump


def test_the_limits_are_the_code_constants() -> None:
    limits = {r[0]: r[1] for r in rows(part("Limits"))}
    assert limits == {
        "chunk header": f"{CHUNK_HEADER.size} bytes",
        "chunk size": f"{files.MIN_CHUNK_BYTES} to {files.MAX_CHUNK_BYTES} bytes (default {files.DEFAULT_CHUNK_BYTES})",
        "chunks per file": str(files.MAX_CHUNKS),
        "manifest": f"{files.MAX_MANIFEST_BYTES} bytes",
        "manifest `meta`": f"{files.MAX_META_BYTES} bytes",
        "`content_type`": f"{files.MAX_CONTENT_TYPE} characters",
        "file name": f"{files.MAX_NAME_BYTES} bytes (UTF-8)",
        "receipt": f"{files.MAX_RECEIPT_BYTES} bytes",
        "receipt `reason`": f"{files.MAX_REASON} characters",
    }
    manifest = part("Manifest")
    assert f"at most 2 MiB ({files.MAX_MANIFEST_BYTES} bytes)" in manifest
    assert f"{files.MIN_CHUNK_BYTES} to {files.MAX_CHUNK_BYTES}" in manifest
    assert f"at most {files.MAX_CHUNKS}" in manifest
    assert f"at most 256 KiB ({files.MAX_RECEIPT_BYTES} bytes)" in part("Receipt")
    assert f"{CHUNK_HEADER.size + files.DEFAULT_CHUNK_BYTES} bytes" in part("Chunk")
    assert f"at most {CHUNK_HEADER.size + files.MAX_CHUNK_BYTES}" in part("Chunk")


def test_the_reasons_are_the_code_reasons_in_order() -> None:
    assert [r[0].strip("`") for r in rows(part("Rejection reasons"))] == list(REJECT_REASONS)


def test_the_key_tables_list_the_keys_the_code_writes() -> None:
    manifest = Manifest("ab" * 16, "x", 0, 1024, "0" * 64, ())
    assert first_keys(part("Manifest")) == list(manifest.to_json())
    written = {k for state in RECEIPT_STATES
               for k in json.loads(encode_receipt(Receipt("ab" * 16, state, (1,), True, "r", "0" * 64)))}
    assert set(first_keys(part("Receipt"))) == written
    assert first_keys(part("File status records")) == [f.name for f in dataclasses.fields(FileStatus)]
    states = re.findall(r"^\| `(up|down)` \| `([a-z]+)` \|", part("File status records"), re.MULTILINE)
    assert set(states) == {
        ("up", "sent"), ("up", "stored"), ("up", "failed"), ("down", "missing"), ("down", "received"),
        ("down", "failed")}


def test_the_examples_are_the_vectors() -> None:
    assert (VECTORS / "receipt_missing.bin").read_text() in part("Receipt")
    example = part("File status records").split("```json\n", 1)[1].split("```", 1)[0]
    vector = (VECTORS / "file_status_down_missing.bin").read_text()
    shown = example.replace("\n ", "")
    head, tail = shown.split('"sha256":"c05fda28..."')
    assert vector.startswith(head) and vector.endswith(tail.strip())
    names = {p.stem for p in VECTORS.glob("*.bin")}
    named = set(re.findall(r"`([a-z_0-9]+)`", part("File transfer golden vectors")))
    assert names <= named, "every vector is named in the doc"
