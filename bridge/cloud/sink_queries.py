"""What the sink database answers: ledger figures, duplicates, invalid messages, gaps, streams,
devices, statuses and reading buckets (the report and the timeline ask these).

:class:`SinkQueries` holds the read side of both stores (:class:`~bridge.cloud.sink_store.SinkStore`,
SQLite, and :class:`~bridge.cloud.pg_store.PgSinkStore`, PostgreSQL): its SQL runs on both, with ``?``
placeholders, and each store supplies ``_rows`` (every database failure comes out as
:class:`~bridge.cloud.errors.SinkStoreError`). Sums are turned into ``int`` (PostgreSQL sums bigints
as numerics) and booleans are summed through ``CASE`` (SQLite stores them as 0/1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from bridge.protocol.model import Lane

# rows per fetch of a store's ``scan`` (reads that may return millions of rows)
SCAN_PAGE_ROWS = 10_000
_READINGS_BY_BATCH = (" FROM readings r JOIN batches b ON b.gateway = r.gateway AND b.stream = r.stream"
                      " AND b.lane = 'telemetry' AND b.seq = r.batch_seq")
_HOLES = (
    "SELECT gateway, stream, lane, seq + 1 AS lo, nxt - 1 AS hi FROM ("
    " SELECT gateway, stream, lane, seq,"
    " LEAD(seq) OVER (PARTITION BY gateway, stream, lane ORDER BY seq) AS nxt"
    " FROM batches) w WHERE nxt > seq + 1"
)


FILE_FIELDS = ("gateway", "id", "name", "size", "state", "path", "sha256", "chunks", "received_chunks", "duplicates",
               "reason", "first_ms", "stored_ms", "device", "content_type")
"""The columns of ``files`` a report shows, in its order."""


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
    missing_telemetry: int = 0  # seqs missing in this stream's telemetry lane
    missing_control: int = 0


@dataclass(frozen=True)
class DeviceStats:
    """Stored data of one gateway's device."""

    readings: int = 0
    metrics: int = 0
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None
    alerts_raised: int = 0
    alerts_cleared: int = 0
    events: int = 0
    responses: int = 0


@dataclass(frozen=True)
class GatewayStatus:
    """Last retained status of a gateway: ``since_ms`` when this state was first seen."""

    state: str
    since_ms: int
    received_ms: int


def _count_of(condition: str) -> str:
    return f"SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)"


_TELEMETRY = _count_of("lane = 'telemetry'")
_CONTROL = _count_of("lane = 'control'")


class SinkQueries:
    """The read side of the sink database; a store supplies :meth:`_rows`."""

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one query (``?`` placeholders) and return all its rows."""
        raise NotImplementedError

    def gateways(self) -> list[str]:
        """Every gateway the store has heard of, sorted."""
        rows = self._rows("SELECT gateway FROM batches UNION SELECT gateway FROM status"
                          " UNION SELECT gateway FROM invalid UNION SELECT gateway FROM duplicates ORDER BY 1")
        return [str(r[0]) for r in rows]

    def lane_stats(self) -> dict[tuple[str, str], LaneStats]:
        """Ledger figures per ``(gateway, lane)``."""
        rows = self._rows(
            f"SELECT gateway, lane, COUNT(*), SUM(readings), {_count_of('replay')}, MIN(seq), MAX(seq),"
            " MAX(received_ms) FROM batches GROUP BY gateway, lane")
        return {(gw, lane): LaneStats(int(n), int(readings), int(replayed), int(lo), int(hi), int(last))
                for gw, lane, n, readings, replayed, lo, hi, last in rows}

    def duplicate_counts(self) -> dict[tuple[str, str], int]:
        """Duplicates dropped per ``(gateway, lane)``."""
        return {(gw, lane): int(n) for gw, lane, n in self._rows("SELECT gateway, lane, count FROM duplicates")}

    def invalid_counts(self) -> dict[str, dict[str, int]]:
        """Invalid messages per gateway and reason."""
        out: dict[str, dict[str, int]] = {}
        for gw, reason, n in self._rows("SELECT gateway, reason, count FROM invalid ORDER BY 1, 2"):
            out.setdefault(gw, {})[reason] = int(n)
        return out

    def gaps(self, limit: int = 20) -> dict[tuple[str, str], GapSummary]:
        """Holes in the seqs seen per ``(gateway, lane)`` (only pairs that have holes), each
        computed within its stream: seqs of different streams never fill or open each other's
        holes. ``first`` is ordered by stream (first seen first), then seq."""
        out: dict[tuple[str, str], GapSummary] = {}
        rows = self._rows(f"SELECT gateway, lane, COUNT(*), SUM(hi - lo + 1) FROM ({_HOLES}) h GROUP BY gateway, lane")
        for gw, lane, ranges, missing in rows:
            first = self._rows(
                f"SELECT h.stream, lo, hi FROM ({_HOLES}) h JOIN (SELECT gateway, stream, MIN(received_ms) AS born"
                " FROM batches GROUP BY gateway, stream) s ON s.gateway = h.gateway AND s.stream = h.stream"
                " WHERE h.gateway = ? AND h.lane = ? ORDER BY s.born, h.stream, lo LIMIT ?",
                (gw, lane, limit),
            )
            out[(gw, lane)] = GapSummary(int(ranges), int(missing), [(int(lo), int(hi)) for _, lo, hi in first],
                                         [str(stream) for stream, _, _ in first])
        return out

    def reading_span(self, device: str | None = None) -> tuple[int, int] | None:
        """``(first ts_ms, last received_ms)`` of the stored readings (of ``device``), None when none."""
        where, args = ("WHERE r.device = ?", (device,)) if device is not None else ("", ())
        lo, hi = self._rows(f"SELECT MIN(r.ts_ms), MAX(b.received_ms){_READINGS_BY_BATCH} {where}", args)[0]
        return None if lo is None else (int(lo), int(hi))

    def reading_buckets(self, bucket_ms: int, device: str | None = None) -> list[tuple[int, int, bool, int]]:
        """Stored readings (of ``device``) counted per ``(ts bucket, received bucket, replayed)``: when
        they were measured, when their batch reached the sink, whether it was replayed from backlog.
        A bucket is ``ms // bucket_ms``."""
        where, args = ("WHERE r.device = ?", (device,)) if device is not None else ("", ())
        rows = self._rows(
            f"SELECT r.ts_ms / ?, b.received_ms / ?, b.replay, COUNT(*){_READINGS_BY_BATCH}"
            f" {where} GROUP BY 1, 2, 3", (bucket_ms, bucket_ms, *args))
        return [(int(t), int(rx), bool(rep), int(n)) for t, rx, rep, n in rows]

    def streams(self) -> dict[str, list[StreamStats]]:
        """The streams of each gateway, in the order the sink first heard of them, with the seqs
        missing in each of their lanes (the gaps per gateway, stream and lane)."""
        rows = self._rows(
            "SELECT gateway, stream, MIN(received_ms), MAX(received_ms),"
            f" {_TELEMETRY}, {_CONTROL}, SUM(readings) FROM batches"
            " GROUP BY gateway, stream ORDER BY gateway, MIN(received_ms), stream")
        missing = {(gw, stream, lane): int(n) for gw, stream, lane, n in self._rows(
            f"SELECT gateway, stream, lane, SUM(hi - lo + 1) FROM ({_HOLES}) h GROUP BY gateway, stream, lane")}
        out: dict[str, list[StreamStats]] = {}
        for gw, stream, first, last, batches, control, readings in rows:
            out.setdefault(gw, []).append(StreamStats(
                stream, int(batches), int(control), int(readings), int(first), int(last),
                missing.get((gw, stream, "telemetry"), 0), missing.get((gw, stream, "control"), 0)))
        return out

    def device_stats(self) -> dict[tuple[str, str], DeviceStats]:
        """Readings, alerts, events and responses per ``(gateway, device)``."""
        acc: dict[tuple[str, str], dict[str, Any]] = {}
        for gw, device, n, metrics, lo, hi in self._rows(
            "SELECT gateway, device, COUNT(*), COUNT(DISTINCT metric), MIN(ts_ms), MAX(ts_ms)"
            " FROM readings GROUP BY gateway, device"
        ):
            acc.setdefault((gw, device), {}).update(readings=int(n), metrics=int(metrics), first_ts_ms=int(lo),
                                                    last_ts_ms=int(hi))
        for gw, device, state, n in self._rows(
            "SELECT gateway, device, state, COUNT(*) FROM alerts GROUP BY gateway, device, state"
        ):
            acc.setdefault((gw, device), {})[f"alerts_{state}"] = int(n)
        for table in ("events", "responses"):
            for gw, device, n in self._rows(f"SELECT gateway, device, COUNT(*) FROM {table} GROUP BY gateway, device"):
                acc.setdefault((gw, device), {})[table] = int(n)
        return {key: DeviceStats(**values) for key, values in sorted(acc.items())}

    def statuses(self) -> dict[str, GatewayStatus]:
        """Last known status per gateway."""
        rows = self._rows("SELECT gateway, state, since_ms, received_ms FROM status")
        return {gw: GatewayStatus(state, since, received) for gw, state, since, received in rows}

    def seqs(self, gateway: str, lane: Lane = "telemetry") -> list[int]:
        """Stored seqs of one gateway's lane, ascending."""
        rows = self._rows("SELECT seq FROM batches WHERE gateway = ? AND lane = ? ORDER BY seq", (gateway, lane))
        return [int(r[0]) for r in rows]

    def files(self) -> list[dict[str, Any]]:
        """The uploads received with ``--files-dir`` (rows of ``files``), oldest first."""
        rows = self._rows(f"SELECT {', '.join(FILE_FIELDS)} FROM files ORDER BY first_ms, gateway, id")
        return [dict(zip(FILE_FIELDS, row, strict=True)) for row in rows]

    def file_state(self, gateway: str, file_id: str) -> tuple[str, str | None, str] | None:
        """``(state, path, sha256)`` of one upload, None when the store has no row for it."""
        rows = self._rows("SELECT state, path, sha256 FROM files WHERE gateway = ? AND id = ?", (gateway, file_id))
        return None if not rows else (str(rows[0][0]), rows[0][1], str(rows[0][2]))

    def count(self, table: Literal["readings", "alerts", "events", "responses", "batches", "config_acks",
                                   "file_status", "files"]) -> int:
        """Row count of one data table."""
        return int(self._rows(f"SELECT COUNT(*) FROM {table}")[0][0])
