"""The upload state on disk: ``{files_dir}/uploads.db`` (stdlib SQLite, WAL).

One row per file being uploaded (its manifest, state, the bitmap of chunks the cloud broker
acknowledged, the sends of each chunk, timestamps) and a short history of finished transfers (for
``edge-gateway files list``). ``synchronous=NORMAL``: in WAL mode a power cut may lose the last
transactions, never corrupt the file. What that can lose is harmless: acknowledged chunks not yet
recorded are sent again (the receiver drops duplicates), and a file moved into ``sending/`` whose row
was lost is put back into the outbox at the next start (:func:`gateway.files.outbox.recover`).
SQLite errors become :class:`FilesError`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.protocol.files import MALFORMED, FileRejected, Manifest, check_name, decode_manifest, encode_manifest
from gateway.errors import TransientError

HISTORY_KEEP = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, manifest TEXT NOT NULL, state TEXT NOT NULL, acked BLOB NOT NULL,
    attempts BLOB NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    sent_ms INTEGER, reason TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS history (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL, created_ms INTEGER NOT NULL, finished_ms INTEGER NOT NULL);
"""


class FilesError(TransientError):
    """The upload state or a file of a transfer could not be read or written."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class UploadRow:
    """A transfer as stored: ``acked`` one byte per chunk (1 = the broker acknowledged it),
    ``attempts`` sends per chunk."""

    manifest: Manifest
    state: str  # queued | sending | sent
    acked: bytearray
    attempts: array[int]
    created_ms: int
    sent_ms: int | None = None

    @property
    def id(self) -> str:
        return self.manifest.id


def new_row(manifest: Manifest) -> UploadRow:
    return UploadRow(manifest, "queued", bytearray(manifest.chunks), array("I", [0] * manifest.chunks), now_ms())


class UploadsDb:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise FilesError(f"{self.path}: {exc}") from exc
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self._db is None:
            raise FilesError(f"{self.path} is not open")
        try:
            self._db.execute("BEGIN")
            yield self._db
            self._db.execute("COMMIT")
        except BaseException as exc:  # whatever went wrong, the transaction ends here: later ones can begin
            if self._db.in_transaction:
                self._db.rollback()
            if isinstance(exc, (OSError, sqlite3.Error)):
                raise FilesError(f"{self.path}: {exc}") from exc
            raise

    def load(self) -> tuple[list[UploadRow], list[tuple[str, str, str]]]:
        """Every transfer under way, oldest first, and the ``(id, name, reason)`` of the rows that cannot
        be read back (written by an older version, damaged): those become failed history entries,
        one by one, so one bad row never stops the others."""
        with self._tx() as db:
            rows = db.execute("SELECT id, manifest, state, acked, attempts, created_ms, sent_ms FROM uploads "
                              "ORDER BY created_ms, id").fetchall()
        out: list[UploadRow] = []
        bad: list[tuple[str, str, str]] = []
        for file_id, manifest, state, acked, attempts, created, sent in rows:
            try:
                counts: array[int] = array("I")
                counts.frombytes(attempts)
                m = decode_manifest(manifest.encode())
                if len(counts) != m.chunks or len(acked) != m.chunks:
                    raise FileRejected(MALFORMED, "its progress does not fit its manifest")
            except (FileRejected, ValueError, TypeError, AttributeError) as exc:
                reason = f"unreadable upload state: {exc}"[:200]
                bad.append((str(file_id), self._fail_unreadable(str(file_id), manifest, created, reason), reason))
                continue
            out.append(UploadRow(m, state, bytearray(acked), counts, created, sent))
        return out, bad

    def _fail_unreadable(self, file_id: str, manifest: object, created_ms: int, reason: str) -> str:
        """Move an unreadable row to the history as failed; returns the name it had (or its id)."""
        try:
            obj = json.loads(str(manifest))
            name, size, sha = check_name(obj.get("name")), int(obj.get("size", 0)), str(obj.get("sha256", ""))
        except (ValueError, TypeError, AttributeError, FileRejected):
            name, size, sha = file_id, 0, ""
        with self._tx() as db:
            db.execute("DELETE FROM uploads WHERE id = ?", (file_id,))
            db.execute("INSERT OR REPLACE INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (file_id, name, size, sha, "failed", reason, created_ms, now_ms()))
        return name

    def insert(self, row: UploadRow) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO uploads (id, manifest, state, acked, attempts, created_ms, updated_ms, sent_ms) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (row.id, encode_manifest(row.manifest).decode(), row.state, bytes(row.acked),
                        row.attempts.tobytes(), row.created_ms, now_ms(), row.sent_ms))

    def save(self, *rows: UploadRow) -> None:
        """Progress of these transfers (state, acknowledged chunks, attempts), in one transaction."""
        with self._tx() as db:
            db.executemany("UPDATE uploads SET state = ?, acked = ?, attempts = ?, updated_ms = ?, sent_ms = ? "
                           "WHERE id = ?", [(r.state, bytes(r.acked), r.attempts.tobytes(), now_ms(), r.sent_ms, r.id)
                                            for r in rows])

    def finish(self, row: UploadRow, state: str, reason: str = "") -> None:
        """The transfer is over (stored, failed, expired): its row becomes a history entry."""
        m = row.manifest
        with self._tx() as db:
            db.execute("DELETE FROM uploads WHERE id = ?", (m.id,))
            db.execute("INSERT OR REPLACE INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (m.id, m.name, m.size, m.sha256, state, reason, row.created_ms, now_ms()))
            db.execute("DELETE FROM history WHERE id NOT IN "
                       "(SELECT id FROM history ORDER BY finished_ms DESC LIMIT ?)", (HISTORY_KEEP,))

    def finished(self, file_id: str) -> str | None:
        """The final state of a transfer in the history, or None."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM history WHERE id = ?", (file_id,)).fetchone()
        return None if row is None else str(row[0])

    def listing(self) -> list[dict[str, Any]]:
        """Transfers under way and the history, newest first (for ``files list``)."""
        with self._tx() as db:
            active = db.execute("SELECT id, manifest, state, acked, created_ms, updated_ms, reason FROM uploads "
                                "ORDER BY created_ms DESC").fetchall()
            done = db.execute("SELECT id, name, size, sha256, state, reason, created_ms, finished_ms FROM history "
                              "ORDER BY finished_ms DESC").fetchall()
        out: list[dict[str, Any]] = []
        for file_id, manifest, state, acked, created, updated, reason in active:
            m = json.loads(manifest)
            out.append({"id": file_id, "name": m["name"], "size": m["size"], "sha256": m["sha256"], "state": state,
                        "chunks": m["chunks"], "acked": sum(acked), "reason": reason, "created_ms": created,
                        "updated_ms": updated})
        for file_id, name, size, sha, state, reason, created, finished in done:
            out.append({"id": file_id, "name": name, "size": size, "sha256": sha, "state": state, "reason": reason,
                        "created_ms": created, "updated_ms": finished})
        return out
