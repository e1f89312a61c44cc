"""PostgreSQL storage of the cloud sink (``edge-gateway sink --db postgresql://...``): the same
tables, keys and answers as the SQLite store (:mod:`bridge.cloud.sink_store`), for a fleet whose
sink runs as several workers writing one database. The only module that imports psycopg.

Each group of messages is one transaction (:mod:`bridge.cloud.sink_group`): the ledger rows
``(gateway, stream, lane, seq)`` are inserted with ``ON CONFLICT DO NOTHING``; the new batches'
readings follow through ``COPY``, the duplicates are counted. Two workers storing the same batch at
once cannot both win: the second insert waits for the first transaction and then finds the key
taken. Writers set ``synchronous_commit = on`` for their session, whatever the server's default, so
a message acknowledged after the commit is on the server's disk (with asynchronous replication, a
failover to a replica may still lose the last commits: use synchronous replication for that).

Every psycopg failure comes out as :class:`~bridge.cloud.errors.SinkStoreError` (the sink then
leaves the message unacknowledged); a lost connection is reopened on the next call. Failing to
connect at start is :class:`~bridge.cloud.errors.StoreUnavailable`. The password (from the URL,
``PGPASSWORD``, a ``.pgpass`` file or ``password_file``) never appears in :attr:`identity`, logs or
error messages.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

from bridge.cloud import sink_rows
from bridge.cloud.errors import SinkStoreError, StoreUnavailable, StoreUnreachable
from bridge.cloud.pg_schema import SCHEMA_VERSION, check_version, current_version, migrate, timescale_available
from bridge.cloud.pg_url import read_password_file, redact_url, turned_away_for_good, url_has_password
from bridge.cloud.sink_queries import SCAN_PAGE_ROWS, SinkQueries
from bridge.cloud.sink_writes import (
    BatchWrite,
    ControlWrite,
    FileWrite,
    InvalidWrite,
    Key,
    Outcome,
    StatusWrite,
    Write,
    counts,
    key_of,
    keys_in_order,
    write_gateway,
)
from bridge.protocol.codec import Batch
from bridge.protocol.errors import InvalidRecord, PermanentBridgeError
from bridge.protocol.model import Lane
from bridge.protocol.records import Json, Stamped, parse_control

__all__ = ["PgSinkStore"]

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# ``ts`` is ``ts_ms`` as a timestamp, clamped to what it can hold (years 1 to 9999); ``ts_ms`` is exact
_MIN_MS = int((datetime(1, 1, 1, tzinfo=timezone.utc) - _EPOCH).total_seconds() * 1000)
_MAX_MS = int((datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc) - _EPOCH).total_seconds() * 1000)
# binary COPY: about 1.2-1.5x the readings/s of text COPY here (no text formatting and parsing of numbers)
_COPY_READINGS = ("COPY readings (gateway, stream, device, metric, ts, ts_ms, value, value_text, seq, batch_seq,"
                  " replay) FROM STDIN (FORMAT BINARY)")
_COPY_TYPES = ["text", "text", "text", "text", "timestamptz", "int8", "float8", "text", "int8", "int8", "bool"]


@cache
def _pg(sql: str) -> str:
    """Portable SQL (``?`` placeholders) as psycopg takes it (``%s``)."""
    return sql.replace("?", "%s")


_CLAIM, _DUPLICATE = _pg(sink_rows.CLAIM_SQL), _pg(sink_rows.DUPLICATE_SQL)
_INVALID, _STATUS, _FILE = _pg(sink_rows.INVALID_SQL), _pg(sink_rows.STATUS_SQL), _pg(sink_rows.FILE_SQL)
_CLAIM_KEYS = ("INSERT INTO batches (gateway, stream, lane, seq, received_ms, replay, readings, created_ms)"
               " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::int8[], %s::int8[], %s::bool[],"
               " %s::int4[], %s::int8[]) ON CONFLICT DO NOTHING RETURNING gateway, stream, lane, seq")


STATEMENT_TIMEOUT_MS = 60_000  # a writer's statement (a group's COPY takes well under a second)
_PG_EPOCH_MS = 946_684_800_000  # 2000-01-01, where PostgreSQL's binary timestamps count from
_PACK_INT8 = struct.Struct(">q").pack


class _TsFromMs(Dumper):
    """``readings.ts`` in binary COPY straight from ``ts_ms`` (microseconds since 2000, clamped): a
    third of the per-reading cost of building a ``datetime`` for every reading."""

    format = Format.BINARY
    oid = psycopg.postgres.types["timestamptz"].oid

    def dump(self, obj: Any) -> bytes:
        return _PACK_INT8((min(max(obj, _MIN_MS), _MAX_MS) - _PG_EPOCH_MS) * 1000)


class PgSinkStore(SinkQueries):
    """The sink's PostgreSQL database. Opening it applies the missing schema migrations (a
    ``readonly`` store only checks the version). One store is used from one thread."""

    def __init__(self, url: str, *, readonly: bool = False, password_file: Path | None = None,
                 connect_timeout_s: int = 10) -> None:
        self.identity = redact_url(url)
        self._url = url
        self._readonly = readonly
        self._password = read_password_file(password_file) if password_file is not None else None
        self._timeout = connect_timeout_s
        self._scans = 0
        if url_has_password(url):
            log.warning("the password in --db %s is visible in process lists; use PGPASSWORD, a .pgpass file "
                        "or --db-password-file", self.identity)
        self._secrets = [p for p in (self._password, urlsplit(url).password, os.environ.get("PGPASSWORD")) if p]
        try:
            self._conn: psycopg.Connection[Any] | None = self._connect()
        except psycopg.Error as exc:
            unavailable = StoreUnavailable if _refused_for_good(exc) else StoreUnreachable
            raise unavailable(f"cannot connect to the sink database {self.identity}: {self._say(exc)} "
                              "(--db)") from exc
        try:
            self._open_schema()
        except psycopg.Error as exc:
            self.close()
            raise StoreUnavailable(f"cannot set up the sink database {self.identity}: {self._say(exc)} "
                                   "(--db)") from exc
        except PermanentBridgeError:
            self.close()
            raise

    @classmethod
    def open_readonly(cls, url: str, password_file: Path | None = None) -> PgSinkStore:
        """A connection for reports that cannot write; sink workers may keep writing meanwhile."""
        return cls(url, readonly=True, password_file=password_file)

    def _say(self, exc: BaseException) -> str:
        """The error's text on one line, without the password."""
        text = " ".join(str(exc).split())
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _connect(self) -> psycopg.Connection[Any]:
        extra: dict[str, Any] = {} if self._password is None else {"password": self._password}
        # TCP keepalives and a send timeout: a database link that goes silent (a failover, a partition)
        # fails the store within about 30 s instead of blocking the loop for the kernel's retransmits
        conn = psycopg.connect(self._url, autocommit=True, connect_timeout=self._timeout,
                               application_name="edge-gateway-sink", keepalives=1, keepalives_idle=10,
                               keepalives_interval=5, keepalives_count=3, tcp_user_timeout=30_000, **extra)
        if self._readonly:
            conn.execute("SET default_transaction_read_only = on")
        else:
            # the ack follows the commit, so the commit must be on disk whatever the server's default
            # (synchronous_commit = off is a common ingest tuning); a stuck statement fails its group
            conn.execute("SET synchronous_commit = on")
            conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        conn.adapters.register_dumper(None, _TsFromMs)  # by oid only: used by the COPY of readings
        return conn

    def _open_schema(self) -> None:
        conn = self._live()
        if self._readonly:
            version = current_version(conn)
            check_version(version, self.identity)
            if version != SCHEMA_VERSION:
                raise PermanentBridgeError(f"{self.identity} is not a sink database (schema version {version}, "
                                           f"expected {SCHEMA_VERSION}); run `edge-gateway sink` on it once")
            return
        with conn.transaction():
            migrate(conn, self.identity)
        if timescale_available(conn):
            log.info("TimescaleDB is installed on %s but not created in it; `CREATE EXTENSION timescaledb` "
                     "there makes readings a hypertable at the next start", self.identity)

    def _live(self) -> psycopg.Connection[Any]:
        """The connection, reopened if it was lost."""
        if self._conn is None or self._conn.closed:
            self._conn = None
            try:
                self._conn = self._connect()
            except psycopg.Error as exc:
                raise SinkStoreError(f"sink database {self.identity}: reconnect: {self._say(exc)}") from exc
            log.info("reconnected to the sink database %s", self.identity)
        return self._conn

    @contextmanager
    def _failing_as(self, what: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            if self._conn is not None and (self._conn.closed or self._conn.broken):
                self._conn.close()
                self._conn = None
            raise SinkStoreError(f"sink database {self.identity}: {what}: {self._say(exc)}") from exc

    @contextmanager
    def _tx(self, what: str) -> Iterator[psycopg.Cursor[Any]]:
        conn = self._live()
        with self._failing_as(what), conn.transaction(), conn.cursor() as cur:
            yield cur

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self._live()
        with self._failing_as("read"):
            return conn.execute(_pg(sql), args).fetchall()

    def scan(self, sql: str) -> Iterator[tuple[Any, ...]]:
        """The rows of ``sql`` through a server-side cursor, a page at a time."""
        conn = self._live()
        self._scans += 1
        with self._failing_as("read"), conn.transaction(), conn.cursor(name=f"scan_{self._scans}") as cur:
            cur.execute(_pg(sql))
            while rows := cur.fetchmany(SCAN_PAGE_ROWS):
                yield from rows

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> PgSinkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ writes
    def _claim(self, cur: psycopg.Cursor[Any], gateway: str, stream: str, lane: Lane, seq: int, *,
               received_ms: int, replay: bool, readings: int, created_ms: int | None) -> bool:
        """Insert the ledger row; False (and the duplicate counted) if the key is already there."""
        cur.execute(_CLAIM, (gateway, stream, lane, seq, received_ms, replay, readings, created_ms))
        if cur.rowcount == 1:
            return True
        cur.execute(_DUPLICATE, (gateway, lane, 1))
        return False

    def _write_batch(self, cur: psycopg.Cursor[Any], batch: Batch, received_ms: int) -> bool:
        if not self._claim(cur, batch.gateway, batch.stream, "telemetry", batch.seq, received_ms=received_ms,
                           replay=batch.replay, readings=len(batch.readings), created_ms=batch.created_ms):
            return False
        _copy_readings(cur, [batch])
        return True

    def _write_control(self, cur: psycopg.Cursor[Any], stamped: Stamped, received_ms: int) -> bool:
        sql, values = sink_rows.control_row(stamped, received_ms)
        st = stamped.stamp
        if not self._claim(cur, st.gateway, st.stream, "control", st.seq, received_ms=received_ms,
                           replay=False, readings=0, created_ms=None):
            return False
        cur.execute(_pg(sql), values)
        return True

    def store_batch(self, batch: Batch, received_ms: int) -> bool:
        """Store a telemetry batch and its readings in one transaction; False for a duplicate.
        Raises :class:`InvalidRecord` (nothing stored) for a batch that cannot be stored as is."""
        sink_rows.check_batch(batch)
        try:
            with self._tx("store a batch") as cur:
                return self._write_batch(cur, batch, received_ms)
        except SinkStoreError as exc:
            raise _invalid_if_data(exc) from exc.__cause__

    def store_control(self, record: Mapping[str, Json] | Stamped, received_ms: int) -> bool:
        """Store one control record in one transaction; False for a duplicate. Raises
        :class:`InvalidRecord` for a malformed record (nothing stored)."""
        stamped = record if isinstance(record, Stamped) else parse_control(record)
        try:
            with self._tx("store a control record") as cur:
                return self._write_control(cur, stamped, received_ms)
        except SinkStoreError as exc:
            raise _invalid_if_data(exc) from exc.__cause__

    def store_group(self, writes: Sequence[Write]) -> list[Outcome]:
        """Apply a group of writes in ONE transaction (see :mod:`bridge.cloud.sink_writes`).

        First set-wise, in a few round trips whatever the group's size: one ledger INSERT of every
        key (``RETURNING`` the new ones), one COPY of the new batches' readings, one executemany per
        control table and counter. If the server refuses a value (a ``DataError``: text with a NUL
        character), that transaction is rolled back and the group is stored again message by
        message, each in a savepoint, so only the refused message is left out (and counted invalid)."""
        try:
            with self._tx("store a group") as cur:
                return _group_setwise(cur, writes)
        except SinkStoreError as exc:
            if not isinstance(exc.__cause__, psycopg.DataError):
                raise
            log.warning("the database refused a value of a group of %d messages; storing them one by one (%s)",
                        len(writes), exc)
        return self._group_one_by_one(writes)

    def _group_one_by_one(self, writes: Sequence[Write]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        conn = self._live()
        with self._tx("store a group") as cur:
            for write in writes:
                try:
                    with conn.transaction():  # a savepoint
                        outcomes.append(self._apply(cur, write))
                except psycopg.DataError as exc:
                    refused = InvalidRecord("malformed batch", self._say(exc))
                    cur.execute(_INVALID, (write_gateway(write), refused.reason, 1))
                    outcomes.append(refused)
        return outcomes

    def _apply(self, cur: psycopg.Cursor[Any], write: Write) -> bool:
        if isinstance(write, BatchWrite):
            return self._write_batch(cur, write.batch, write.received_ms)
        if isinstance(write, ControlWrite):
            return self._write_control(cur, write.record, write.received_ms)
        sql, values = sink_rows.count_row(write)
        cur.execute(_pg(sql), values)
        return True

    def record_invalid(self, gateway: str, reason: str) -> None:
        """Count a message from ``gateway`` that could not be decoded or stored, by short reason."""
        with self._tx("count an invalid message") as cur:
            cur.execute(_INVALID, (gateway, reason, 1))

    def record_status(self, gateway: str, state: str, received_ms: int) -> None:
        """Remember the gateway's status; ``since_ms`` changes only when the state does."""
        with self._tx("record a status") as cur:
            cur.execute(_STATUS, (gateway, state, received_ms, received_ms))


def _copy_readings(cur: psycopg.Cursor[Any], batches: Sequence[Batch]) -> None:
    with cur.copy(_COPY_READINGS) as copy:
        copy.set_types(_COPY_TYPES)
        for b in batches:
            gateway, stream, seq, replay = b.gateway, b.stream, b.seq, b.replay
            for r in b.readings:
                copy.write_row((gateway, stream, r.device, r.metric, r.ts_ms, r.ts_ms,
                                *sink_rows.value_columns(r.value), r.seq, seq, replay))


def _claim_keys(cur: psycopg.Cursor[Any], writes: Sequence[Write], first: dict[Key, int]) -> set[Key]:
    """Insert the ledger rows of the keys (in key order, so two workers lock them in the same
    order); the keys that were new."""
    columns: list[list[Any]] = [[] for _ in range(8)]
    for key in sorted(first):
        write = writes[first[key]]
        row: tuple[Any, ...]
        if isinstance(write, BatchWrite):
            b = write.batch
            row = (*key, write.received_ms, b.replay, len(b.readings), b.created_ms)
        else:
            assert isinstance(write, ControlWrite)
            row = (*key, write.received_ms, False, 0, None)
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    cur.execute(_CLAIM_KEYS, columns)
    return {(g, s, lane, seq) for g, s, lane, seq in cur.fetchall()}


def _group_setwise(cur: psycopg.Cursor[Any], writes: Sequence[Write]) -> list[Outcome]:
    first, repeated = keys_in_order(writes)
    new = _claim_keys(cur, writes, first) if first else set()
    outcomes: list[Outcome] = [True] * len(writes)
    duplicates: list[tuple[str, str]] = []
    for i in [*repeated, *(i for key, i in first.items() if key not in new)]:
        outcomes[i] = False
        key = key_of(writes[i])
        assert key is not None
        duplicates.append((key[0], key[2]))
    batches = [w.batch for w, o in zip(writes, outcomes, strict=True) if o is True and isinstance(w, BatchWrite)]
    if batches:
        _copy_readings(cur, batches)
    controls: dict[str, list[tuple[Any, ...]]] = {}
    for w, o in zip(writes, outcomes, strict=True):
        if o is True and isinstance(w, ControlWrite):
            sql, values = sink_rows.control_row(w.record, w.received_ms)
            controls.setdefault(sql, []).append(values)
    for sql, rows in controls.items():
        cur.executemany(_pg(sql), rows)
    invalid = [(w.gateway, w.reason) for w in writes if isinstance(w, InvalidWrite)]
    # by gateway (a stable sort: a gateway's last status stays last), the lock order of every worker
    statuses = sorted(((w.gateway, w.state, w.received_ms, w.received_ms) for w in writes
                       if isinstance(w, StatusWrite)), key=lambda row: row[0])
    files = [sink_rows.count_row(w)[1] for w in writes if isinstance(w, FileWrite)]
    for sql, args in ((_DUPLICATE, counts(duplicates)), (_INVALID, counts(invalid)), (_STATUS, statuses),
                      (_FILE, files)):
        if args:
            cur.executemany(sql, args)
    return outcomes


def _refused_for_good(exc: psycopg.Error) -> bool:
    return not isinstance(exc, psycopg.OperationalError) or turned_away_for_good(str(exc))


def _invalid_if_data(exc: SinkStoreError) -> Exception:
    """A value the database refuses (text with a NUL character, a number out of range) will be refused
    on every redelivery: an invalid record, not a storage failure."""
    if isinstance(exc.__cause__, psycopg.DataError):
        return InvalidRecord("malformed batch", str(exc))
    return exc
