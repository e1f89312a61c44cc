"""SQLite storage of the cloud sink: batches, readings, control records, duplicates and status.

Every uplink message a gateway sends carries ``(gateway, stream, lane, seq)``: ``stream`` is the
random id of the gateway's buffer (a wiped or restored buffer starts a new one; messages of
envelope version 1 have none and are stored with ``''``), ``lane`` is ``telemetry`` (msgpack
batches) or ``control`` (alerts, events and responses share the gateway's control sequence). The
``batches`` table is the ledger of those keys for both lanes (a control record is a row with
``readings = 0``); its primary key is what makes the sink idempotent: a message whose key is
already stored is dropped and counted in ``duplicates``. The ledger row and the message's data
rows go in ONE transaction, so a crash never leaves half a batch. The sink stores the messages that
arrived together as one group (:meth:`SinkStore.store_group`): one transaction, one fsync, each
message in a savepoint so that one the database refuses is rolled back alone.

Gaps are not stored: they are computed when asked from the seqs in the ledger (a missing seq between
the lowest and the highest seen for a gateway, stream and lane), so a gap later filled by a late or replayed
batch disappears by itself.

Values are stored exactly: ``readings.value`` is the REAL, and ``readings.value_text`` holds the
exact value as text where a REAL cannot (an integer beyond +-2**53, or -0.0, whose sign SQLite
drops); it is NULL otherwise. A database of schema version 1 or 2 is migrated in place, in one
transaction, when the sink opens it (version 1's rows get the stream ``''``; version 3 adds the
``file_status`` and ``files`` tables).

One :class:`SinkStore` is used from one thread. Readers (the report) open their own connection
with :meth:`SinkStore.open_readonly`; WAL mode lets them read while the sink writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bridge.cloud.errors import SinkStoreError, StoreUnavailable
from bridge.cloud.sink_queries import (
    SCAN_PAGE_ROWS,
    DeviceStats,
    GapSummary,
    GatewayStatus,
    LaneStats,
    SinkQueries,
    StreamStats,
)
from bridge.cloud.sink_rows import (
    CLAIM_SQL,
    DUPLICATE_SQL,
    INVALID_SQL,
    STATUS_SQL,
    check_batch,
    control_row,
    count_row,
    value_columns,
)
from bridge.cloud.sink_schema import SCHEMA_VERSION, create_schema, migrate_v1
from bridge.cloud.sink_writes import BatchWrite, ControlWrite, Outcome, Write, write_gateway
from bridge.protocol.codec import Batch
from bridge.protocol.errors import InvalidRecord, PermanentBridgeError
from bridge.protocol.model import Lane
from bridge.protocol.records import Json, Stamped, parse_control

__all__ = [
    "DeviceStats",
    "GapSummary",
    "GatewayStatus",
    "InvalidRecord",
    "LaneStats",
    "SinkStore",
    "SinkStoreError",
    "StreamStats",
]

_INSERT_READING = ("INSERT INTO readings (gateway, device, metric, ts_ms, value, value_text, seq, batch_seq, stream)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _connect(path: Path, *, durable: bool, readonly: bool) -> sqlite3.Connection:
    if readonly:
        if not path.exists():
            raise FileNotFoundError(f"no sink database at {path}")
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    else:
        try:
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the sink database {path}: {exc}; its directory must "
                                   "exist and be writable by this user (--db)") from exc
        db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    db.execute("PRAGMA busy_timeout=5000")
    return db


class SinkStore(SinkQueries):
    """The sink's SQLite database (WAL mode). ``durable=True`` fsyncs every commit
    (``synchronous=FULL``): a message acknowledged to the broker survives a power cut too.
    Every SQLite failure comes out as :class:`SinkStoreError`."""

    def __init__(self, path: Path | str, *, durable: bool = True, readonly: bool = False) -> None:
        self.path = Path(path)
        self.identity = str(self.path.resolve())
        try:
            self._db = _connect(self.path, durable=durable, readonly=readonly)
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot read the sink database {self.path}: {exc}") from exc
        if version not in ((SCHEMA_VERSION,) if readonly else (0, 1, 2, SCHEMA_VERSION)):
            self._db.close()
            hint = "; run `edge-gateway sink` on it once to upgrade it" if version in (1, 2) else ""
            raise PermanentBridgeError(
                f"{self.path} is not a sink database of this version (schema version {version}, "
                f"expected {SCHEMA_VERSION}){hint}"
            )
        with self._sqlite("open"):
            if version == 1:
                migrate_v1(self._db)
            elif not readonly:
                create_schema(self._db)

    @classmethod
    def open_readonly(cls, path: Path | str) -> SinkStore:
        """A read-only connection for reports; the sink may keep writing meanwhile."""
        return cls(path, readonly=True)

    @contextmanager
    def _sqlite(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise SinkStoreError(f"sink database {self.path}: {what}: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with self._sqlite("write"):
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._sqlite("read"):
            return self._db.execute(sql, args).fetchall()

    def scan(self, sql: str) -> Iterator[tuple[Any, ...]]:
        """The rows of ``sql``, fetched a page at a time (a store may hold millions of readings)."""
        with self._sqlite("read"):
            cur = self._db.execute(sql)
            while rows := cur.fetchmany(SCAN_PAGE_ROWS):
                yield from rows

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SinkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ writes
    def _claim(self, cur: sqlite3.Cursor, gateway: str, stream: str, lane: Lane, seq: int, *,
               received_ms: int, replay: bool, readings: int, created_ms: int | None) -> bool:
        """Insert the ledger row; False (and the duplicate counted) if the key is already there."""
        cur.execute(CLAIM_SQL, (gateway, stream, lane, seq, received_ms, int(replay), readings, created_ms))
        if cur.rowcount == 1:
            return True
        cur.execute(DUPLICATE_SQL, (gateway, lane, 1))
        return False

    def _write_batch(self, cur: sqlite3.Cursor, batch: Batch, received_ms: int) -> bool:
        claimed = self._claim(cur, batch.gateway, batch.stream, "telemetry", batch.seq,
                              received_ms=received_ms, replay=batch.replay, readings=len(batch.readings),
                              created_ms=batch.created_ms)
        if not claimed:
            return False
        gateway, stream, seq = batch.gateway, batch.stream, batch.seq
        try:
            cur.executemany(_INSERT_READING, [(gateway, r.device, r.metric, r.ts_ms, *value_columns(r.value), r.seq,
                                               seq, stream) for r in batch.readings])
        except (sqlite3.IntegrityError, OverflowError) as exc:
            raise InvalidRecord("malformed batch", str(exc)) from exc
        return True

    def _write_control(self, cur: sqlite3.Cursor, stamped: Stamped, received_ms: int) -> bool:
        sql, values = control_row(stamped, received_ms)
        st = stamped.stamp
        if not self._claim(cur, st.gateway, st.stream, "control", st.seq, received_ms=received_ms,
                           replay=False, readings=0, created_ms=None):
            return False
        cur.execute(sql, values)
        return True

    def store_batch(self, batch: Batch, received_ms: int) -> bool:
        """Store a telemetry batch and its readings in one transaction.

        Returns False if ``(gateway, stream, "telemetry", seq)`` was already stored (counted as
        duplicate). Raises :class:`InvalidRecord` (nothing stored) for a batch that cannot be stored
        as is.
        """
        check_batch(batch)
        with self._tx() as cur:
            return self._write_batch(cur, batch, received_ms)

    def store_control(self, record: Mapping[str, Json] | Stamped, received_ms: int) -> bool:
        """Store one control record (validated through :func:`~bridge.protocol.records.parse_control`
        when given as its decoded JSON object) in one transaction.

        Returns False if ``(gateway, stream, "control", seq)`` was already stored (counted as
        duplicate). Raises :class:`InvalidRecord` for a malformed record (nothing stored).
        """
        stamped = record if isinstance(record, Stamped) else parse_control(record)
        with self._tx() as cur:
            return self._write_control(cur, stamped, received_ms)

    def store_group(self, writes: Sequence[Write]) -> list[Outcome]:
        """Apply a group of writes in ONE transaction (one fsync), each in a savepoint of its own: a
        write the database refuses is rolled back alone and counted as invalid (see
        :mod:`bridge.cloud.sink_writes`)."""
        outcomes: list[Outcome] = []
        with self._tx() as cur:
            for write in writes:
                cur.execute("SAVEPOINT w")
                try:
                    outcomes.append(self._apply(cur, write))
                except InvalidRecord as exc:
                    cur.execute("ROLLBACK TO w")
                    cur.execute(INVALID_SQL, (write_gateway(write), exc.reason, 1))
                    outcomes.append(exc)
                cur.execute("RELEASE w")
        return outcomes

    def _apply(self, cur: sqlite3.Cursor, write: Write) -> bool:
        if isinstance(write, BatchWrite):
            return self._write_batch(cur, write.batch, write.received_ms)
        if isinstance(write, ControlWrite):
            return self._write_control(cur, write.record, write.received_ms)
        cur.execute(*count_row(write))
        return True

    def record_invalid(self, gateway: str, reason: str) -> None:
        """Count a message from ``gateway`` that could not be decoded or stored, by short reason."""
        with self._tx() as cur:
            cur.execute(INVALID_SQL, (gateway, reason, 1))

    def record_status(self, gateway: str, state: str, received_ms: int) -> None:
        """Remember the gateway's status (``online``/``offline``); ``since_ms`` changes only when the
        state does, so a retained status redelivered on reconnect keeps its first-seen time."""
        with self._tx() as cur:
            cur.execute(STATUS_SQL, (gateway, state, received_ms, received_ms))
