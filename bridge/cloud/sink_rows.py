"""What both sink stores (SQLite and PostgreSQL) do the same way: check a batch before storing it,
split a value into its float and exact-text columns, and build the row of a control record and the
upserts of the counters and the status. SQL here uses ``?`` placeholders and runs on both backends
(the PostgreSQL store turns ``?`` into ``%s``)."""

from __future__ import annotations

import json
import math
from typing import Any

from bridge.cloud.sink_writes import FileWrite, InvalidWrite, StatusWrite
from bridge.protocol.codec import Batch
from bridge.protocol.errors import InvalidRecord
from bridge.protocol.records import Alert, ConfigStatus, Event, FileStatus, Json, Response, Stamped
from bridge.protocol.topics import valid_id

_INT64 = 2**63
_EXACT_REAL = 2**53

CLAIM_SQL = ("INSERT INTO batches (gateway, stream, lane, seq, received_ms, replay, readings, created_ms)"
             " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
# the counters take how many to add (1 for one message, more for a group)
DUPLICATE_SQL = ("INSERT INTO duplicates (gateway, lane, count) VALUES (?, ?, ?)"
                 " ON CONFLICT (gateway, lane) DO UPDATE SET count = duplicates.count + excluded.count")
INVALID_SQL = ("INSERT INTO invalid (gateway, reason, count) VALUES (?, ?, ?)"
               " ON CONFLICT (gateway, reason) DO UPDATE SET count = invalid.count + excluded.count")
STATUS_SQL = ("INSERT INTO status (gateway, state, since_ms, received_ms) VALUES (?, ?, ?, ?)"
              " ON CONFLICT (gateway) DO UPDATE SET"
              " since_ms = CASE WHEN status.state = excluded.state THEN status.since_ms ELSE excluded.since_ms END,"
              " state = excluded.state, received_ms = excluded.received_ms")

_FILE_COLUMNS = ("gateway", "id", "name", "size", "sha256", "chunks", "received_chunks", "duplicates", "state",
                 "reason", "path", "first_ms", "stored_ms", "device", "content_type", "meta_json")
# a row already stored keeps what it says (a late duplicate only adds to its count); first_ms never changes
FILE_SQL = (f"INSERT INTO files ({', '.join(_FILE_COLUMNS)}) VALUES ({', '.join('?' * len(_FILE_COLUMNS))})"
            " ON CONFLICT (gateway, id) DO UPDATE SET duplicates = files.duplicates + excluded.duplicates, "
            + ", ".join(f"{c} = CASE WHEN files.state = 'stored' THEN files.{c} ELSE excluded.{c} END"
                        for c in _FILE_COLUMNS[2:] if c not in ("duplicates", "first_ms")))


def count_row(write: InvalidWrite | StatusWrite | FileWrite) -> tuple[str, tuple[Any, ...]]:
    """The upsert of an invalid-message count, of a status or of a file's row, with its values."""
    if isinstance(write, FileWrite):
        return FILE_SQL, tuple(getattr(write, c) for c in _FILE_COLUMNS)
    if isinstance(write, InvalidWrite):
        return INVALID_SQL, (write.gateway, write.reason, 1)
    return STATUS_SQL, (write.gateway, write.state, write.received_ms, write.received_ms)


def _json(body: Json, *, sort_keys: bool = True) -> str:
    return json.dumps(body, separators=(",", ":"), sort_keys=sort_keys)


def control_row(stamped: Stamped, received_ms: int) -> tuple[str, tuple[Any, ...]]:
    """The INSERT of a control record into the table of its kind, with its values."""
    st, rec = stamped.stamp, stamped.record
    if isinstance(rec, Alert):
        return ("INSERT INTO alerts (gateway, seq, device, metric, level, state, value, threshold, ts_ms, rule,"
                " received_ms, stream) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (st.gateway, st.seq, rec.device, rec.metric, rec.level, rec.state, float(rec.value),
                 float(rec.threshold), rec.ts_ms, rec.rule, received_ms, st.stream))
    if isinstance(rec, Event):
        return ("INSERT INTO events (gateway, seq, device, ts_ms, body_json, received_ms, stream)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (st.gateway, st.seq, rec.device, rec.ts_ms, _json(rec.event), received_ms, st.stream))
    if isinstance(rec, Response):
        body = {"command": rec.command, "id": rec.id, "status": rec.status, "result": rec.result,
                "source": rec.source, "rtt_ms": rec.rtt_ms}
        return ("INSERT INTO responses (gateway, seq, device, body_json, received_ms, stream)"
                " VALUES (?, ?, ?, ?, ?, ?)", (st.gateway, st.seq, rec.device, _json(body), received_ms, st.stream))
    if isinstance(rec, FileStatus):
        body = {"name": rec.name, "size": rec.size, "sha256": rec.sha256, "reason": rec.reason,
                "missing": rec.missing, "manifest": rec.manifest, "device": rec.device, "path": rec.path}
        return ("INSERT INTO file_status (gateway, seq, id, direction, state, body_json, received_ms, stream)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (st.gateway, st.seq, rec.id, rec.direction, rec.state, _json(body), received_ms, st.stream))
    assert isinstance(rec, ConfigStatus)
    body = {"version": rec.version, "status": rec.status, "errors": rec.errors, "current_version": rec.current_version}
    return ("INSERT INTO config_acks (gateway, seq, body_json, received_ms, stream) VALUES (?, ?, ?, ?, ?)",
            (st.gateway, st.seq, _json(body, sort_keys=False), received_ms, st.stream))


def value_columns(value: float | int) -> tuple[float, str | None]:
    """(float, exact text or None): the text only where a double cannot hold the value exactly
    (an integer beyond +-2**53, or -0.0, whose sign SQLite drops)."""
    if type(value) is int:
        return float(value), (str(value) if not -_EXACT_REAL <= value <= _EXACT_REAL else None)
    if value == 0.0 and math.copysign(1.0, value) < 0:
        return value, "-0.0"
    return value, None


def check_batch(batch: Batch) -> None:
    """Raise :class:`InvalidRecord` for a batch no store can keep as is (nothing is stored then)."""
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
