"""SQLite storage of the cloud sink: batches, readings, control records, duplicates and status.

Every uplink message a gateway sends carries ``(gateway, stream, lane, seq)``: ``stream`` is the
random id of the gateway's buffer (a wiped or restored buffer starts a new one; messages of
envelope version 1 have none and are stored with ``''``), ``lane`` is ``telemetry`` (msgpack
batches) or ``control`` (alerts, events and responses share the gateway's control sequence). The
``batches`` table is the ledger of those keys for both lanes (a control record is a row with
``readings = 0``); its primary key is what makes the sink idempotent: a message whose key is
already stored is dropped and counted in ``duplicates``. The ledger row and the message's data
rows go in ONE transaction, so a crash never leaves half a batch.

Gaps are not stored: they are computed when asked from the seqs in the ledger (a missing seq between
the lowest and the highest seen for a gateway, stream and lane), so a gap later filled by a late or replayed
batch disappears by itself.

Values are stored exactly: ``readings.value`` is the REAL, and ``readings.value_text`` holds the
exact value as text where a REAL cannot (an integer beyond +-2**53, or -0.0, whose sign SQLite
drops); it is NULL otherwise. A database of schema version 1 is migrated in place, in one
transaction, when the sink opens it (its rows get the stream ``''``).

One :class:`SinkStore` is used from one thread. Readers (the report) open their own connection
with :meth:`SinkStore.open_readonly`; WAL mode lets them read while the sink writes.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bridge.cloud.errors import StoreUnavailable
from bridge.protocol.codec import Batch
from bridge.protocol.errors import PermanentBridgeError
from bridge.protocol.topics import valid_id

__all__ = [
    "ControlRecord",
    "DeviceStats",
    "GapSummary",
    "GatewayStatus",
    "InvalidRecord",
    "LaneStats",
    "SinkStore",
    "StreamStats",
    "parse_control",
]

Lane = Literal["telemetry", "control"]
ControlKind = Literal["alert", "event", "response", "config_status"]
CONTROL_KINDS: tuple[ControlKind, ...] = ("alert", "event", "response", "config_status")
SCHEMA_VERSION = 2
_INT64 = 2**63
_EXACT_REAL = 2**53

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


class InvalidRecord(PermanentBridgeError):
    """A decoded message cannot be stored as it is (missing field, wrong type, non-finite value).

    ``reason`` is a short, low-cardinality key for counters; the message has the details.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# ---------------------------------------------------------------- control records

@dataclass(frozen=True)
class ControlRecord:
    """A validated control-lane record. ``fields`` holds the kind-specific columns."""

    gateway: str
    seq: int
    kind: ControlKind
    device: str
    fields: dict[str, Any]
    stream: str = ""


def _int(record: Mapping[str, Any], key: str) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not -_INT64 <= value < _INT64:
        raise InvalidRecord("malformed record", f"{key!r} must be a 64-bit integer, got {value!r}")
    return value


def _float(record: Mapping[str, Any], key: str) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRecord("malformed record", f"{key!r} must be a finite number, got {value!r}")
    return float(value)


def _str(record: Mapping[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRecord("malformed record", f"{key!r} must be a non-empty string, got {value!r}")
    return value


def _body(record: Mapping[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, dict):
        raise InvalidRecord("malformed record", f"{key!r} must be an object, got {type(value).__name__}")
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


_RESPONSE_FIELDS = ("command", "id", "status", "result", "source", "rtt_ms")


def _response_device(record: Mapping[str, Any]) -> str:
    """A response's device may be empty: the gateway answers commands whose topic had no device."""
    value = record.get("device")
    if not isinstance(value, str):
        raise InvalidRecord("malformed record", f"'device' must be a string, got {value!r}")
    return value


def parse_control(record: Mapping[str, Any]) -> ControlRecord:
    """Validate a decoded control record (shapes of ``gateway.process.pipeline``; ``gw``/``seq`` added by
    the lane writer). Raise :class:`InvalidRecord` on anything missing or mistyped."""
    gateway = _str(record, "gw")
    if not valid_id(gateway):
        raise InvalidRecord("bad gateway id", repr(gateway))
    seq = _int(record, "seq")
    if seq < 0:
        raise InvalidRecord("malformed record", f"negative seq {seq}")
    stream = record.get("stream", "")  # records of gateways before stream ids have none
    if stream != "" and not valid_id(stream):
        raise InvalidRecord("bad stream id", repr(stream)[:80])
    kind = record.get("kind")
    if kind == "config_status":  # the gateway's answer to a config push: no device
        _str(record, "status")
        body = {key: record.get(key) for key in ("version", "status", "errors", "current_version")}
        return ControlRecord(gateway, seq, kind, "", {"body_json": json.dumps(body, separators=(",", ":"))}, stream)
    device = _response_device(record) if kind == "response" else _str(record, "device")
    fields: dict[str, Any]
    if kind == "alert":
        state = _str(record, "state")
        if state not in ("raised", "cleared"):
            raise InvalidRecord("malformed record", f"alert state {state!r}")
        fields = {
            "metric": _str(record, "metric"), "level": _str(record, "level"), "state": state,
            "value": _float(record, "value"), "threshold": _float(record, "threshold"),
            "ts_ms": _int(record, "ts_ms"), "rule": _str(record, "rule"),
        }
    elif kind == "event":
        fields = {"ts_ms": _int(record, "ts_ms"), "body_json": _body(record, "event")}
    elif kind == "response":
        _str(record, "status")
        body = {key: record.get(key) for key in _RESPONSE_FIELDS}
        fields = {"body_json": json.dumps(body, separators=(",", ":"), sort_keys=True)}
    else:
        raise InvalidRecord("unknown kind", repr(kind))
    return ControlRecord(gateway, seq, kind, device, fields, stream)


def _value_columns(value: float | int) -> tuple[float, str | None]:
    """(REAL, exact text or None): the text only where the REAL cannot hold the value exactly."""
    if type(value) is int:
        return float(value), (str(value) if not -_EXACT_REAL <= value <= _EXACT_REAL else None)
    if value == 0.0 and math.copysign(1.0, value) < 0:
        return value, "-0.0"
    return value, None


def _check_batch(batch: Batch) -> None:
    if not valid_id(batch.gateway):
        raise InvalidRecord("bad gateway id", repr(batch.gateway))
    if batch.stream != "" and not valid_id(batch.stream):
        raise InvalidRecord("bad stream id", repr(batch.stream)[:80])
    if not 0 <= batch.seq < _INT64 or not -_INT64 <= batch.created_ms < _INT64:
        raise InvalidRecord("malformed batch", f"seq {batch.seq}, created_ms {batch.created_ms} out of range")
    for r in batch.readings:
        if not math.isfinite(r.value):
            raise InvalidRecord("non-finite value", f"{r.device}/{r.metric} = {r.value}")
        if not -_INT64 <= r.ts_ms < _INT64 or (r.seq is not None and not -_INT64 <= r.seq < _INT64):
            raise InvalidRecord("malformed batch", f"{r.device}/{r.metric}: ts_ms/seq out of range")


# ---------------------------------------------------------------- query results

@dataclass(frozen=True)
class LaneStats:
    """Ledger figures of one gateway's lane."""

    records: int
    readings: int
    replayed: int
    first_seq: int
    last_seq: int
    last_received_ms: int


@dataclass(frozen=True)
class GapSummary:
    """Missing seqs of one gateway's lane: ``ranges`` is the number of holes, ``missing`` the number
    of seqs in them, ``first`` the first holes as inclusive ``(from_seq, to_seq)`` pairs."""

    ranges: int
    missing: int
    first: list[tuple[int, int]]
    first_streams: list[str] = field(default_factory=list, compare=False)  # the stream of each range in ``first``


@dataclass(frozen=True)
class StreamStats:
    """One stream of a gateway (``''``: messages of envelope version 1, which had no stream id)."""

    stream: str
    batches: int
    control_records: int
    readings: int
    first_received_ms: int
    last_received_ms: int


@dataclass(frozen=True)
class DeviceStats:
    """Stored data of one gateway's device."""

    readings: int
    metrics: int
    first_ts_ms: int | None
    last_ts_ms: int | None
    alerts_raised: int
    alerts_cleared: int
    events: int
    responses: int


@dataclass(frozen=True)
class GatewayStatus:
    """Last retained status of a gateway: ``since_ms`` when this state was first seen."""

    state: str
    since_ms: int
    received_ms: int


# ---------------------------------------------------------------- the store

class SinkStore:
    """The sink's SQLite database (WAL mode). ``durable=True`` fsyncs every commit
    (``synchronous=FULL``): a message acknowledged to the broker survives a power cut too."""

    def __init__(self, path: Path | str, *, durable: bool = True, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no sink database at {self.path}")
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                       isolation_level=None)
        else:
            try:
                self._db = sqlite3.connect(self.path, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open the sink database {self.path}: {exc}; its directory must "
                                       "exist and be writable by this user (--db)") from exc
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute("PRAGMA busy_timeout=5000")
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version not in ((SCHEMA_VERSION,) if readonly else (0, 1, SCHEMA_VERSION)):
            self._db.close()
            hint = "; run `edge-gateway sink` on it once to upgrade it" if version == 1 else ""
            raise PermanentBridgeError(
                f"{self.path} is not a sink database of this version (schema version {version}, "
                f"expected {SCHEMA_VERSION}){hint}"
            )
        if version == 1:
            self._migrate_v1()
        elif not readonly:
            self._create_schema()

    @classmethod
    def open_readonly(cls, path: Path | str) -> SinkStore:
        """A read-only connection for reports; the sink may keep writing meanwhile."""
        return cls(path, readonly=True)

    def _create_schema(self) -> None:
        self._db.executescript(f"BEGIN;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;")

    def _migrate_v1(self) -> None:
        """Schema 1 -> 2 in one transaction: the ledger's key gains the stream (old rows: ``''``),
        data tables gain ``stream`` and readings ``value_text``."""
        added = "".join(f"ALTER TABLE {t} ADD COLUMN stream TEXT NOT NULL DEFAULT '';"
                        for t in ("readings", "alerts", "events", "responses", "config_acks"))
        self._db.executescript(
            "BEGIN IMMEDIATE;"
            "ALTER TABLE batches RENAME TO batches_v1;"
            f"{_LEDGER}"
            "INSERT INTO batches (gateway, stream, lane, seq, received_ms, replay, readings, created_ms)"
            " SELECT gateway, '', lane, seq, received_ms, replay, readings, created_ms FROM batches_v1;"
            "DROP TABLE batches_v1;"
            f"{added}ALTER TABLE readings ADD COLUMN value_text TEXT;"
            f"PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
        )

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

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
        cur.execute(
            "INSERT OR IGNORE INTO batches (gateway, stream, lane, seq, received_ms, replay, readings, created_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (gateway, stream, lane, seq, received_ms, int(replay), readings, created_ms),
        )
        if cur.rowcount == 1:
            return True
        cur.execute(
            "INSERT INTO duplicates (gateway, lane, count) VALUES (?, ?, 1)"
            " ON CONFLICT (gateway, lane) DO UPDATE SET count = count + 1",
            (gateway, lane),
        )
        return False

    def store_batch(self, batch: Batch, received_ms: int) -> bool:
        """Store a telemetry batch and its readings in one transaction.

        Returns False if ``(gateway, stream, "telemetry", seq)`` was already stored (counted as
        duplicate). Raises :class:`InvalidRecord` (nothing stored) for a batch that cannot be stored
        as is.
        """
        _check_batch(batch)
        with self._tx() as cur:
            claimed = self._claim(cur, batch.gateway, batch.stream, "telemetry", batch.seq,
                                  received_ms=received_ms, replay=batch.replay, readings=len(batch.readings),
                                  created_ms=batch.created_ms)
            if not claimed:
                return False
            try:
                cur.executemany(
                    "INSERT INTO readings (gateway, device, metric, ts_ms, value, value_text, seq, batch_seq,"
                    " stream) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(batch.gateway, r.device, r.metric, r.ts_ms, *_value_columns(r.value), r.seq, batch.seq,
                      batch.stream) for r in batch.readings],
                )
            except (sqlite3.IntegrityError, OverflowError) as exc:
                raise InvalidRecord("malformed batch", str(exc)) from exc
        return True

    def store_control(self, record: Mapping[str, Any] | ControlRecord, received_ms: int) -> bool:
        """Store one control record (alert, event or response) in one transaction.

        Returns False if ``(gateway, stream, "control", seq)`` was already stored (counted as
        duplicate). Raises :class:`InvalidRecord` for a malformed record (nothing stored).
        """
        rec = record if isinstance(record, ControlRecord) else parse_control(record)
        f = rec.fields
        with self._tx() as cur:
            if not self._claim(cur, rec.gateway, rec.stream, "control", rec.seq, received_ms=received_ms,
                               replay=False, readings=0, created_ms=None):
                return False
            if rec.kind == "alert":
                cur.execute(
                    "INSERT INTO alerts (gateway, seq, device, metric, level, state, value, threshold,"
                    " ts_ms, rule, received_ms, stream) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (rec.gateway, rec.seq, rec.device, f["metric"], f["level"], f["state"], f["value"],
                     f["threshold"], f["ts_ms"], f["rule"], received_ms, rec.stream),
                )
            elif rec.kind == "event":
                cur.execute(
                    "INSERT INTO events (gateway, seq, device, ts_ms, body_json, received_ms, stream)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (rec.gateway, rec.seq, rec.device, f["ts_ms"], f["body_json"], received_ms, rec.stream),
                )
            elif rec.kind == "config_status":
                cur.execute("INSERT INTO config_acks (gateway, seq, body_json, received_ms, stream)"
                            " VALUES (?, ?, ?, ?, ?)", (rec.gateway, rec.seq, f["body_json"], received_ms, rec.stream))
            else:
                cur.execute(
                    "INSERT INTO responses (gateway, seq, device, body_json, received_ms, stream)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (rec.gateway, rec.seq, rec.device, f["body_json"], received_ms, rec.stream),
                )
        return True

    def record_invalid(self, gateway: str, reason: str) -> None:
        """Count a message from ``gateway`` that could not be decoded or stored, by short reason."""
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO invalid (gateway, reason, count) VALUES (?, ?, 1)"
                " ON CONFLICT (gateway, reason) DO UPDATE SET count = count + 1",
                (gateway, reason),
            )

    def record_status(self, gateway: str, state: str, received_ms: int) -> None:
        """Remember the gateway's status (``online``/``offline``); ``since_ms`` changes only when the
        state does, so a retained status redelivered on reconnect keeps its first-seen time."""
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO status (gateway, state, since_ms, received_ms) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (gateway) DO UPDATE SET"
                " since_ms = CASE WHEN state = excluded.state THEN since_ms ELSE excluded.since_ms END,"
                " state = excluded.state, received_ms = excluded.received_ms",
                (gateway, state, received_ms, received_ms),
            )

    # ------------------------------------------------------------ queries
    def gateways(self) -> list[str]:
        """Every gateway the store has heard of, sorted."""
        rows = self._db.execute(
            "SELECT gateway FROM batches UNION SELECT gateway FROM status"
            " UNION SELECT gateway FROM invalid UNION SELECT gateway FROM duplicates ORDER BY 1"
        ).fetchall()
        return [str(r[0]) for r in rows]

    def lane_stats(self) -> dict[tuple[str, str], LaneStats]:
        """Ledger figures per ``(gateway, lane)``."""
        rows = self._db.execute(
            "SELECT gateway, lane, COUNT(*), SUM(readings), SUM(replay), MIN(seq), MAX(seq), MAX(received_ms)"
            " FROM batches GROUP BY gateway, lane"
        ).fetchall()
        return {(gw, lane): LaneStats(n, int(readings), int(replayed), lo, hi, last)
                for gw, lane, n, readings, replayed, lo, hi, last in rows}

    def duplicate_counts(self) -> dict[tuple[str, str], int]:
        """Duplicates dropped per ``(gateway, lane)``."""
        rows = self._db.execute("SELECT gateway, lane, count FROM duplicates").fetchall()
        return {(gw, lane): int(n) for gw, lane, n in rows}

    def invalid_counts(self) -> dict[str, dict[str, int]]:
        """Invalid messages per gateway and reason."""
        out: dict[str, dict[str, int]] = {}
        for gw, reason, n in self._db.execute("SELECT gateway, reason, count FROM invalid ORDER BY 1, 2"):
            out.setdefault(gw, {})[reason] = int(n)
        return out

    def gaps(self, limit: int = 20) -> dict[tuple[str, str], GapSummary]:
        """Holes in the seqs seen per ``(gateway, lane)`` (only pairs that have holes), each
        computed within its stream: seqs of different streams never fill or open each other's
        holes. ``first`` is ordered by stream (first seen first), then seq."""
        holes = (
            "SELECT gateway, stream, lane, seq + 1 AS lo, nxt - 1 AS hi FROM ("
            " SELECT gateway, stream, lane, seq,"
            " LEAD(seq) OVER (PARTITION BY gateway, stream, lane ORDER BY seq) AS nxt"
            " FROM batches) WHERE nxt > seq + 1"
        )
        out: dict[tuple[str, str], GapSummary] = {}
        rows = self._db.execute(
            f"SELECT gateway, lane, COUNT(*), SUM(hi - lo + 1) FROM ({holes}) GROUP BY gateway, lane"
        ).fetchall()
        for gw, lane, ranges, missing in rows:
            first = self._db.execute(
                f"SELECT h.stream, lo, hi FROM ({holes}) h JOIN (SELECT gateway, stream, MIN(received_ms) AS born"
                " FROM batches GROUP BY gateway, stream) s ON s.gateway = h.gateway AND s.stream = h.stream"
                " WHERE h.gateway = ? AND h.lane = ? ORDER BY s.born, h.stream, lo LIMIT ?",
                (gw, lane, limit),
            ).fetchall()
            out[(gw, lane)] = GapSummary(int(ranges), int(missing), [(int(lo), int(hi)) for _, lo, hi in first],
                                         [str(stream) for stream, _, _ in first])
        return out

    _READINGS_BY_BATCH = (" FROM readings r JOIN batches b ON b.gateway = r.gateway AND b.stream = r.stream"
                          " AND b.lane = 'telemetry' AND b.seq = r.batch_seq")

    def reading_span(self, device: str | None = None) -> tuple[int, int] | None:
        """``(first ts_ms, last received_ms)`` of the stored readings (of ``device``), None when none."""
        where, args = ("WHERE r.device = ?", (device,)) if device is not None else ("", ())
        lo, hi = self._db.execute(f"SELECT MIN(r.ts_ms), MAX(b.received_ms){self._READINGS_BY_BATCH} {where}",
                                  args).fetchone()
        return None if lo is None else (int(lo), int(hi))

    def reading_buckets(self, bucket_ms: int, device: str | None = None) -> list[tuple[int, int, bool, int]]:
        """Stored readings (of ``device``) counted per ``(ts bucket, received bucket, replayed)``: when
        they were measured, when their batch reached the sink, whether it was replayed from backlog.
        A bucket is ``ms // bucket_ms``."""
        where, args = ("WHERE r.device = ?", (device,)) if device is not None else ("", ())
        rows = self._db.execute(
            f"SELECT r.ts_ms / ?1, b.received_ms / ?1, b.replay, COUNT(*){self._READINGS_BY_BATCH}"
            f" {where.replace('?', '?2')} GROUP BY 1, 2, 3", (bucket_ms, *args)).fetchall()
        return [(int(t), int(rx), bool(rep), int(n)) for t, rx, rep, n in rows]

    def streams(self) -> dict[str, list[StreamStats]]:
        """The streams of each gateway, in the order the sink first heard of them."""
        rows = self._db.execute(
            "SELECT gateway, stream, MIN(received_ms), MAX(received_ms),"
            " SUM(lane = 'telemetry'), SUM(lane = 'control'), SUM(readings) FROM batches"
            " GROUP BY gateway, stream ORDER BY gateway, MIN(received_ms), stream"
        ).fetchall()
        out: dict[str, list[StreamStats]] = {}
        for gw, stream, first, last, batches, control, readings in rows:
            out.setdefault(gw, []).append(StreamStats(stream, int(batches), int(control), int(readings),
                                                      int(first), int(last)))
        return out

    def device_stats(self) -> dict[tuple[str, str], DeviceStats]:
        """Readings, alerts, events and responses per ``(gateway, device)``."""
        acc: dict[tuple[str, str], dict[str, Any]] = {}

        def row(gw: str, device: str) -> dict[str, Any]:
            return acc.setdefault((gw, device), {
                "readings": 0, "metrics": 0, "first_ts_ms": None, "last_ts_ms": None,
                "alerts_raised": 0, "alerts_cleared": 0, "events": 0, "responses": 0,
            })

        for gw, device, n, metrics, lo, hi in self._db.execute(
            "SELECT gateway, device, COUNT(*), COUNT(DISTINCT metric), MIN(ts_ms), MAX(ts_ms)"
            " FROM readings GROUP BY gateway, device"
        ):
            row(gw, device).update(readings=n, metrics=metrics, first_ts_ms=lo, last_ts_ms=hi)
        for gw, device, state, n in self._db.execute(
            "SELECT gateway, device, state, COUNT(*) FROM alerts GROUP BY gateway, device, state"
        ):
            row(gw, device)[f"alerts_{state}"] = n
        for table in ("events", "responses"):
            for gw, device, n in self._db.execute(
                f"SELECT gateway, device, COUNT(*) FROM {table} GROUP BY gateway, device"
            ):
                row(gw, device)[table] = n
        return {key: DeviceStats(**values) for key, values in sorted(acc.items())}

    def statuses(self) -> dict[str, GatewayStatus]:
        """Last known status per gateway."""
        rows = self._db.execute("SELECT gateway, state, since_ms, received_ms FROM status").fetchall()
        return {gw: GatewayStatus(state, since, received) for gw, state, since, received in rows}

    def seqs(self, gateway: str, lane: Lane = "telemetry") -> list[int]:
        """Stored seqs of one gateway's lane, ascending."""
        rows = self._db.execute(
            "SELECT seq FROM batches WHERE gateway = ? AND lane = ? ORDER BY seq", (gateway, lane)
        ).fetchall()
        return [int(r[0]) for r in rows]

    def count(self, table: Literal["readings", "alerts", "events", "responses", "batches"]) -> int:
        """Row count of one data table."""
        return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
