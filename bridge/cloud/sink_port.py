"""What the sink, its handler and the report need from a store, whatever database is behind it, and
:func:`open_sink_store`, which picks the database from ``--db``: a ``postgresql://`` (or
``postgres://``) URL opens :class:`~bridge.cloud.pg_store.PgSinkStore`, anything else is the path of
a SQLite file (:class:`~bridge.cloud.sink_store.SinkStore`). psycopg is imported only for a URL, so
a gateway never loads it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from bridge.cloud.sink_queries import DeviceStats, GapSummary, GatewayStatus, LaneStats, StreamStats
from bridge.cloud.sink_writes import Outcome, Write
from bridge.protocol.codec import Batch
from bridge.protocol.model import Lane
from bridge.protocol.records import Json, Stamped

__all__ = ["SinkStorePort", "is_postgres_url", "open_sink_store"]

PG_SCHEMES = ("postgresql://", "postgres://")


class SinkStorePort(Protocol):
    """A sink store: idempotent writes keyed by ``(gateway, stream, lane, seq)`` (``store_group``: the
    messages of one group commit in one transaction, see :mod:`bridge.cloud.sink_writes`;
    ``store_batch``/``store_control``: one message), the report's queries, and ``identity`` (the
    database's name for logs and the default MQTT client id; never a password)."""

    identity: str

    def store_group(self, writes: Sequence[Write]) -> list[Outcome]: ...
    def store_batch(self, batch: Batch, received_ms: int) -> bool: ...
    def store_control(self, record: Mapping[str, Json] | Stamped, received_ms: int) -> bool: ...
    def record_invalid(self, gateway: str, reason: str) -> None: ...
    def record_status(self, gateway: str, state: str, received_ms: int) -> None: ...

    def gateways(self) -> list[str]: ...
    def lane_stats(self) -> dict[tuple[str, str], LaneStats]: ...
    def duplicate_counts(self) -> dict[tuple[str, str], int]: ...
    def invalid_counts(self) -> dict[str, dict[str, int]]: ...
    def gaps(self, limit: int = 20) -> dict[tuple[str, str], GapSummary]: ...
    def reading_span(self, device: str | None = None) -> tuple[int, int] | None: ...
    def reading_buckets(self, bucket_ms: int, device: str | None = None) -> list[tuple[int, int, bool, int]]: ...
    def streams(self) -> dict[str, list[StreamStats]]: ...
    def device_stats(self) -> dict[tuple[str, str], DeviceStats]: ...
    def statuses(self) -> dict[str, GatewayStatus]: ...
    def seqs(self, gateway: str, lane: Lane = "telemetry") -> list[int]: ...
    def scan(self, sql: str) -> Iterator[tuple[Any, ...]]: ...
    def count(self, table: Literal["readings", "alerts", "events", "responses", "batches", "config_acks"]) -> int: ...

    def close(self) -> None: ...
    def __enter__(self) -> SinkStorePort: ...
    def __exit__(self, *exc: object) -> None: ...


def is_postgres_url(db: str | Path) -> bool:
    return isinstance(db, str) and db.startswith(PG_SCHEMES)


def open_sink_store(db: str | Path, *, readonly: bool = False, password_file: Path | None = None,
                    durable: bool = True) -> SinkStorePort:
    """Open the sink store ``db`` names: a PostgreSQL URL or a SQLite file path. ``password_file``
    (PostgreSQL only) holds the database password; ``durable`` (SQLite only) fsyncs every commit.
    Raises :class:`~bridge.cloud.errors.StoreUnavailable` when the database cannot be reached or opened."""
    if is_postgres_url(db):
        from bridge.cloud.pg_store import PgSinkStore

        return PgSinkStore(str(db), readonly=readonly, password_file=password_file)
    from bridge.cloud.sink_store import SinkStore

    return SinkStore.open_readonly(db) if readonly else SinkStore(db, durable=durable)
