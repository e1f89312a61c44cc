"""The sink database's schema (version 3) and the in-place migrations from versions 1 and 2.

Version 3 adds ``file_status`` (the gateways' FileStatus control records) and ``files`` (the
uploads the sink received with ``--files-dir``); a version 2 database gains them, empty, and keeps
every row."""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 3

_LEDGER = """
CREATE TABLE IF NOT EXISTS batches (
    gateway TEXT NOT NULL, stream TEXT NOT NULL, lane TEXT NOT NULL, seq INTEGER NOT NULL,
    received_ms INTEGER NOT NULL, replay INTEGER NOT NULL, readings INTEGER NOT NULL,
    created_ms INTEGER,
    PRIMARY KEY (gateway, stream, lane, seq)
) WITHOUT ROWID;
"""
_SCHEMA = _LEDGER + """
CREATE TABLE IF NOT EXISTS readings (
    gateway TEXT NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    value REAL NOT NULL, seq INTEGER, batch_seq INTEGER NOT NULL,
    stream TEXT NOT NULL DEFAULT '', value_text TEXT
);
CREATE TABLE IF NOT EXISTS alerts (
    gateway TEXT NOT NULL, seq INTEGER NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL,
    level TEXT NOT NULL, state TEXT NOT NULL, value REAL NOT NULL, threshold REAL NOT NULL,
    ts_ms INTEGER NOT NULL, rule TEXT NOT NULL, received_ms INTEGER NOT NULL,
    stream TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS events (
    gateway TEXT NOT NULL, seq INTEGER NOT NULL, device TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    body_json TEXT NOT NULL, received_ms INTEGER NOT NULL, stream TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS responses (
    gateway TEXT NOT NULL, seq INTEGER NOT NULL, device TEXT NOT NULL, body_json TEXT NOT NULL,
    received_ms INTEGER NOT NULL, stream TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS config_acks (
    gateway TEXT NOT NULL, seq INTEGER NOT NULL, body_json TEXT NOT NULL, received_ms INTEGER NOT NULL,
    stream TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS file_status (
    gateway TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, direction TEXT NOT NULL,
    state TEXT NOT NULL, body_json TEXT NOT NULL, received_ms INTEGER NOT NULL,
    stream TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS files (
    gateway TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL,
    sha256 TEXT NOT NULL, chunks INTEGER NOT NULL, received_chunks INTEGER NOT NULL,
    duplicates INTEGER NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL, path TEXT,
    first_ms INTEGER NOT NULL, stored_ms INTEGER, device TEXT, content_type TEXT NOT NULL,
    meta_json TEXT NOT NULL,
    PRIMARY KEY (gateway, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS duplicates (
    gateway TEXT NOT NULL, lane TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (gateway, lane)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS invalid (
    gateway TEXT NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (gateway, reason)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS status (
    gateway TEXT PRIMARY KEY, state TEXT NOT NULL, since_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL
) WITHOUT ROWID;
"""


def create_schema(db: sqlite3.Connection) -> None:
    """Create the tables a new database lacks and stamp the schema version (idempotent): also the
    migration from version 2, whose tables are all still there (``IF NOT EXISTS``)."""
    db.executescript(f"BEGIN;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;")


def migrate_v1(db: sqlite3.Connection) -> None:
    """Schema 1 -> 3 in one transaction: the ledger's key gains the stream (old rows: ``''``),
    data tables gain ``stream`` and readings ``value_text``; the tables of version 3 are created."""
    added = "".join(f"ALTER TABLE {t} ADD COLUMN stream TEXT NOT NULL DEFAULT '';"
                    for t in ("readings", "alerts", "events", "responses", "config_acks"))
    db.executescript(
        "BEGIN IMMEDIATE;"
        "ALTER TABLE batches RENAME TO batches_v1;"
        f"{_LEDGER}"
        "INSERT INTO batches (gateway, stream, lane, seq, received_ms, replay, readings, created_ms)"
        " SELECT gateway, '', lane, seq, received_ms, replay, readings, created_ms FROM batches_v1;"
        "DROP TABLE batches_v1;"
        f"{added}ALTER TABLE readings ADD COLUMN value_text TEXT;{_SCHEMA}"
        f"PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
    )
