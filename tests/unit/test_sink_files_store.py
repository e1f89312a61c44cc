"""File transfer in both sink stores: FileStatus control records in ``file_status``, upload rows in
``files`` (a stored row is never downgraded, duplicates add up), the report's file list, and the
migrations that add those tables (SQLite schema 3, PostgreSQL migration 3) keeping older rows."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import psycopg
from rich.console import Console

from bridge.cloud.file_receiver import FileOptions
from bridge.cloud.pg_schema import migrate
from bridge.cloud.pg_store import PgSinkStore
from bridge.cloud.report import build_report, render_report
from bridge.cloud.sink import Sink
from bridge.cloud.sink_handler import SinkHandler
from bridge.cloud.sink_port import open_sink_store
from bridge.cloud.sink_schema import SCHEMA_VERSION, create_schema
from bridge.cloud.sink_store import SinkStore
from bridge.cloud.sink_writes import FileWrite
from bridge.mqtt.types import Message
from bridge.protocol.records import FileStatus, Stamp, encode_control
from bridge.protocol.topics import CloudTopics
from tests.unit.test_sink_store import T0, batch, rows

FID = "0123456789abcdef0123456789abcdef"
ROW = FileWrite("gw-1", FID, "log.tar.gz", 3000, "ab" * 32, 3, 1, "under_way", T0, device="dev-1",
                meta_json='{"k":"v"}')


def test_a_file_status_record_is_stored_like_every_control_record(sink_db: str | Path) -> None:
    record = FileStatus(FID, "up", "sent", name="log.tar.gz", size=3000, sha256="ab" * 32)
    message = Message(CloudTopics("gw-1").file_status, encode_control(record, Stamp("gw-1", 7, "s1")), 1, False)
    with open_sink_store(sink_db, durable=False) as store:
        handler = SinkHandler(store, "edge/{gateway_id}")
        handler.handle(message)
        handler.handle(message)  # the same (gateway, stream, lane, seq) again: a duplicate
        assert (handler.counters.file_statuses, handler.counters.duplicates, handler.counters.invalid) == (1, 1, 0)
        got = rows(store, "SELECT gateway, stream, seq, id, direction, state, body_json FROM file_status")
        assert store.count("file_status") == 1
    assert [tuple(r[:6]) for r in got] == [("gw-1", "s1", 7, FID, "up", "sent")]
    assert '"name":"log.tar.gz"' in got[0][6] and '"size":3000' in got[0][6]


def test_file_rows_are_upserted_never_downgraded_and_listed_by_the_report(sink_db: str | Path) -> None:
    with open_sink_store(sink_db, durable=False) as store:
        store.store_group([ROW])
        store.store_group([replace(ROW, received_chunks=2, duplicates=2, first_ms=T0 + 5)])
        assert store.file_state("gw-1", FID) == ("under_way", None, "ab" * 32)
        store.store_group([replace(ROW, received_chunks=3, state="stored", path="gw-1/log.tar.gz",
                                   stored_ms=T0 + 9, duplicates=1)])
        # a refused manifest under the same id later: the stored row keeps what it says
        store.store_group([FileWrite("gw-1", FID, "../x", 0, "", 0, 0, "failed", T0 + 10, reason="bad_name")])
        assert store.file_state("gw-1", FID) == ("stored", "gw-1/log.tar.gz", "ab" * 32)
        assert store.file_state("gw-1", "f" * 32) is None
        store.store_batch(batch(1), T0)
    report = build_report(sink_db)
    assert report["files"] == [{
        "gateway": "gw-1", "id": FID, "name": "log.tar.gz", "size": 3000, "state": "stored", "path": "gw-1/log.tar.gz",
        "sha256": "ab" * 32, "chunks": 3, "received_chunks": 3, "duplicates": 3, "reason": "", "first_ms": T0,
        "stored_ms": T0 + 9, "device": "dev-1", "content_type": "application/octet-stream"}]
    assert report["totals"]["files"] == {"stored": 1, "under_way": 0, "failed": 0}
    assert build_report(sink_db, device="other")["files"] == []
    console = Console(record=True, width=80)
    render_report(report, console)
    text = console.export_text()
    assert "Files (1)" in text and FID in text and "gw-1/log.tar.gz" in text


def test_a_schema_2_database_gains_the_file_tables_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    with sqlite3.connect(path, isolation_level=None) as db:
        create_schema(db)
        db.executescript("DROP TABLE files; DROP TABLE file_status; PRAGMA user_version=2;")
        db.execute("INSERT INTO batches VALUES ('gw-1', 's1', 'telemetry', 1, ?, 0, 3, ?)", (T0, T0))
    with SinkStore(path, durable=False) as store:
        assert store.seqs("gw-1") == [1]
        assert not store.store_batch(replace(batch(1), stream="s1"), T0)  # the old row still dedups
        store.store_group([ROW])
        assert rows(store, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(3,)]
        assert store.count("files") == 1
    SinkStore.open_readonly(path).close()


def test_postgres_migration_3_adds_the_file_tables_and_keeps_the_rows(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn, conn.transaction():
        assert migrate(conn, "test", target=2) == 2
        conn.execute("INSERT INTO batches (gateway, stream, lane, seq, received_ms, replay, readings, created_ms)"
                     " VALUES ('gw-1', 's1', 'telemetry', 1, 1, false, 0, 1)")
    with PgSinkStore(pg_url) as store:
        assert store._rows("SELECT max(version) FROM schema_migrations") == [(3,)]
        assert store.seqs("gw-1") == [1]
        store.store_group([ROW])
        assert store.count("files") == 1 and store.count("file_status") == 0


def test_the_file_topics_are_a_plain_subscription_even_in_a_shared_group(tmp_path: Path) -> None:
    with SinkStore(tmp_path / "sink.sqlite", durable=False) as store:
        shared = Sink(store, ["mqtt://127.0.0.1:1"], shared_group="sinks", files=FileOptions(tmp_path / "files"))
        data_only = Sink(store, ["mqtt://127.0.0.1:1"], shared_group="sinks")
    files = [f for f, _ in shared.filters if "/files/up/" in f]
    assert files == ["edge/+/files/up/+/manifest", "edge/+/files/up/+/chunk"]
    assert "$share/sinks/edge/+/files/status" in [f for f, _ in shared.filters]  # FileStatus records: data
    assert [f for f, _ in data_only.filters if "/files/up/" in f] == []
