"""uploads.db (gateway/files/uploads_db.py) on a real SQLite file: a row that cannot be read back
fails alone (the others load), and a write that raises anything leaves no transaction open."""

from __future__ import annotations

import math
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from bridge.transfer.plan import plan_file
from gateway.files.uploads_db import UploadsDb, new_row


def _db(tmp: Path) -> UploadsDb:
    db = UploadsDb(tmp / "uploads.db")
    db.open()
    return db


def test_an_unreadable_row_fails_alone_and_the_others_load(tmp_path: Path) -> None:
    db = _db(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"a")
    (tmp_path / "b.bin").write_bytes(b"b")
    good, bad = (new_row(plan_file(tmp_path / n)) for n in ("a.bin", "b.bin"))
    db.insert(good)
    db.insert(bad)
    db.close()
    raw = sqlite3.connect(tmp_path / "uploads.db")
    raw.execute("UPDATE uploads SET manifest = replace(manifest, '\"application/octet-stream\"', ?) WHERE id = ?",
                ('"' + "x" * 300 + '"', bad.id))
    raw.commit()
    raw.close()
    db = _db(tmp_path)
    rows, unreadable = db.load()
    assert [r.id for r in rows] == [good.id]
    assert [(i, n) for i, n, _ in unreadable] == [(bad.id, "b.bin")] and "content_type" in unreadable[0][2]
    assert db.finished(bad.id) == "failed"
    assert db.load()[1] == []  # gone from the transfers under way


def test_a_write_that_raises_leaves_no_transaction_open(tmp_path: Path) -> None:
    db = _db(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"a")
    row = new_row(plan_file(tmp_path / "a.bin"))
    broken = replace(row, manifest=replace(row.manifest, meta={"v": math.nan}))
    with pytest.raises(ValueError, match="JSON compliant"):
        db.insert(broken)  # encode_manifest refuses NaN inside the transaction
    db.insert(row)
    db.save(row)
    assert [r.id for r in db.load()[0]] == [row.id]
