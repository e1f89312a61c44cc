"""The PostgreSQL sink database's schema, as numbered migrations.

``schema_migrations(version, applied_at)`` lists the steps applied. :func:`migrate` runs the
missing ones at start, in one transaction under a transaction-level advisory lock, so several sink
workers starting at once apply each step exactly once (the others wait, then find nothing to do). A
database whose version is newer than :data:`MIGRATIONS` knows is refused with
:class:`~bridge.protocol.errors.PermanentBridgeError` instead of being written in a shape this code
does not know.

TimescaleDB: when the ``timescaledb`` extension is created in the database (``CREATE EXTENSION
timescaledb``, which needs its package and ``shared_preload_libraries``), the next start that finds
``readings`` a plain table makes it a hypertable on ``ts`` (existing rows are moved into chunks). Without it
``readings`` stays a plain table and everything else works the same. This module only issues SQL;
the connection comes from :mod:`bridge.cloud.pg_store`.
"""

from __future__ import annotations

from typing import Any, Protocol

from bridge.protocol.errors import PermanentBridgeError

# pg_advisory_xact_lock key of the migrations: any constant, the same in every worker
LOCK_KEY = 0x5EED_5114

_V1 = """
CREATE TABLE batches (
    gateway text NOT NULL, stream text NOT NULL, lane text NOT NULL, seq bigint NOT NULL,
    received_ms bigint NOT NULL, replay boolean NOT NULL, readings integer NOT NULL, created_ms bigint,
    PRIMARY KEY (gateway, stream, lane, seq)
);
CREATE TABLE readings (
    gateway text NOT NULL, stream text NOT NULL, device text NOT NULL, metric text NOT NULL,
    ts timestamptz NOT NULL, ts_ms bigint NOT NULL, value double precision NOT NULL, value_text text,
    seq bigint, batch_seq bigint NOT NULL, replay boolean NOT NULL
);
CREATE INDEX readings_batch ON readings (gateway, stream, batch_seq);
CREATE INDEX readings_device ON readings (gateway, device, ts);
CREATE TABLE alerts (
    gateway text NOT NULL, stream text NOT NULL, seq bigint NOT NULL, device text NOT NULL,
    metric text NOT NULL, level text NOT NULL, state text NOT NULL, value double precision NOT NULL,
    threshold double precision NOT NULL, ts_ms bigint NOT NULL, rule text NOT NULL, received_ms bigint NOT NULL
);
CREATE INDEX alerts_device ON alerts (gateway, device);
CREATE TABLE events (
    gateway text NOT NULL, stream text NOT NULL, seq bigint NOT NULL, device text NOT NULL,
    ts_ms bigint NOT NULL, body_json text NOT NULL, received_ms bigint NOT NULL
);
CREATE TABLE responses (
    gateway text NOT NULL, stream text NOT NULL, seq bigint NOT NULL, device text NOT NULL,
    body_json text NOT NULL, received_ms bigint NOT NULL
);
CREATE TABLE config_acks (
    gateway text NOT NULL, stream text NOT NULL, seq bigint NOT NULL, body_json text NOT NULL,
    received_ms bigint NOT NULL
);
CREATE TABLE duplicates (
    gateway text NOT NULL, lane text NOT NULL, count bigint NOT NULL, PRIMARY KEY (gateway, lane)
);
CREATE TABLE invalid (
    gateway text NOT NULL, reason text NOT NULL, count bigint NOT NULL, PRIMARY KEY (gateway, reason)
);
CREATE TABLE status (
    gateway text PRIMARY KEY, state text NOT NULL, since_ms bigint NOT NULL, received_ms bigint NOT NULL
);
CREATE VIEW gaps AS
    SELECT gateway, stream, lane, seq + 1 AS first_missing, nxt - 1 AS last_missing FROM (
        SELECT gateway, stream, lane, seq, LEAD(seq) OVER (PARTITION BY gateway, stream, lane ORDER BY seq) AS nxt
        FROM batches) w
    WHERE nxt > seq + 1;
"""

# Version 2: time indexes, for retention on plain PostgreSQL (delete readings older than N days, the
# ledger rows older than the longest backlog a gateway may hold) and for "what arrived since".
_V2 = """
CREATE INDEX IF NOT EXISTS readings_ts ON readings (ts);
CREATE INDEX IF NOT EXISTS batches_received ON batches (received_ms);
"""

# Version 3: file transfer: the gateways' FileStatus control records, and the uploads the sink
# received with --files-dir (one row per gateway and file id, updated as chunks arrive).
_V3 = """
CREATE TABLE file_status (
    gateway text NOT NULL, stream text NOT NULL, seq bigint NOT NULL, id text NOT NULL, direction text NOT NULL,
    state text NOT NULL, body_json text NOT NULL, received_ms bigint NOT NULL
);
CREATE INDEX file_status_id ON file_status (gateway, id);
CREATE TABLE files (
    gateway text NOT NULL, id text NOT NULL, name text NOT NULL, size bigint NOT NULL, sha256 text NOT NULL,
    chunks integer NOT NULL, received_chunks integer NOT NULL, duplicates bigint NOT NULL, state text NOT NULL,
    reason text NOT NULL, path text, first_ms bigint NOT NULL, stored_ms bigint, device text,
    content_type text NOT NULL, meta_json text NOT NULL,
    PRIMARY KEY (gateway, id)
);
"""

# (version, SQL); append new steps, never edit an applied one
MIGRATIONS: list[tuple[int, str]] = [(1, _V1), (2, _V2), (3, _V3)]
SCHEMA_VERSION = MIGRATIONS[-1][0]

_HYPERTABLE = "SELECT create_hypertable('readings', 'ts', if_not_exists => TRUE, migrate_data => TRUE)"


class Executes(Protocol):
    """The part of a database connection the migrations use (a psycopg connection)."""

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...


def _scalar(conn: Executes, sql: str) -> Any:
    return conn.execute(sql).fetchone()[0]


def current_version(conn: Executes) -> int:
    """The applied schema version; 0 for a database without the migrations table."""
    if _scalar(conn, "SELECT to_regclass('schema_migrations')") is None:
        return 0
    return int(_scalar(conn, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))


def check_version(version: int, where: str) -> None:
    if version > SCHEMA_VERSION:
        raise PermanentBridgeError(
            f"the sink database {where} has schema version {version}, newer than this edge-gateway knows "
            f"({SCHEMA_VERSION}); upgrade edge-gateway")


def migrate(conn: Executes, where: str, target: int = SCHEMA_VERSION) -> int:
    """Apply the missing steps up to ``target`` (tests stop at an older one); call inside one
    transaction (the lock is released at its end). Returns the schema version now in force."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
    version = current_version(conn)
    check_version(version, where)
    if version == 0:  # no DDL at all when nothing is missing: a role without CREATE can run the sink then
        conn.execute("CREATE TABLE schema_migrations ("
                     "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
    for step, sql in MIGRATIONS:
        if version < step <= target:
            conn.execute(sql)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (step,))
    if _scalar(conn, "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") and not _scalar(
            conn, "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'readings'"):
        conn.execute(_HYPERTABLE)  # once: no DDL at later starts, as without TimescaleDB
    return max(version, target)


def timescale_available(conn: Executes) -> bool:
    """The timescaledb extension is installed on the server but not created in this database."""
    return bool(_scalar(conn, "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
                              " AND installed_version IS NULL"))
