"""How the buffer's database is laid out for an SD card: a new buffer gets small pages, deletes do
not overwrite the deleted batch, and a buffer made with SQLite's default page size still works."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import diskcache

from bridge.uplink.store import Lane
from gateway.store.buffer import Budget, DiskBuffer
from gateway.store.rows import DB_FILE, PAGE_SIZE, Rows

BUDGETS: dict[Lane, Budget] = {"telemetry": Budget(1 << 30), "control": Budget(1 << 30)}


def pragma(db: Path, name: str) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute(f"PRAGMA {name}").fetchone()[0])
    finally:
        con.close()


def test_a_new_buffer_gets_small_pages_in_wal_mode(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path / "buf", BUDGETS)
    buf.open()
    buf.close()
    db = tmp_path / "buf" / DB_FILE
    assert pragma(db, "page_size") == PAGE_SIZE == 1024
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


def test_deletes_do_not_overwrite_the_deleted_batch(tmp_path: Path) -> None:
    """With secure_delete (on in Debian's SQLite) every delete rewrote the batch's pages with zeros."""
    rows = Rows(tmp_path)
    rows.open()
    try:
        assert [int(v) for v in rows._keys("PRAGMA secure_delete", ())] == [0]
        marker = b"still-on-the-page" * 64
        rows.put({"t:00000000000000000001:1:0:10:x": marker})
        rows.delete(["t:00000000000000000001:1:0:10:x"], {})
    finally:
        rows.close()
    # the freed page keeps its old bytes (nobody zeroed them): the delete wrote only what it had to
    con = sqlite3.connect(tmp_path / DB_FILE)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    assert marker[:64] in (tmp_path / DB_FILE).read_bytes()


def test_a_buffer_made_with_4_kib_pages_keeps_them_and_its_records(tmp_path: Path) -> None:
    old = diskcache.Cache(str(tmp_path), eviction_policy="none")  # as an earlier version made it
    old.set("t:00000000000000000001:5:1700000000000:100:edge/gw/telemetry", b"old batch")
    old.set("seq:telemetry", 1)
    old.close()
    assert pragma(tmp_path / DB_FILE, "page_size") == 4096
    buf = DiskBuffer(tmp_path, BUDGETS)
    buf.open()
    try:
        assert buf.readings("telemetry") == 5
        [record] = buf.take("telemetry", 10)
        assert record.payload == b"old batch" and record.seq == 1
        buf.ack(record.key)
        assert buf.append("telemetry", "edge/gw/telemetry", lambda seq: b"new", 1).seq == 2
    finally:
        buf.close()
    assert pragma(tmp_path / DB_FILE, "page_size") == 4096
