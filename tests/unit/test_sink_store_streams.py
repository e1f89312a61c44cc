"""The sink's key is (gateway, stream, lane, seq): a new stream's seqs are never taken for duplicates;
values that a REAL cannot hold are kept exactly; a schema-1 database is migrated in place."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from bridge.cloud.report import build_report, render_report
from bridge.cloud.sink_port import open_sink_store
from bridge.cloud.sink_store import SinkStore
from bridge.mqtt.errors import PermanentBridgeError
from bridge.protocol.codec import Batch
from bridge.protocol.model import Reading
from tests.unit.test_sink_store import T0, alert, batch, rows

# The schema of version 1, as the sink created it before streams existed.
SCHEMA_V1 = """
CREATE TABLE batches (gateway TEXT NOT NULL, lane TEXT NOT NULL, seq INTEGER NOT NULL,
    received_ms INTEGER NOT NULL, replay INTEGER NOT NULL, readings INTEGER NOT NULL, created_ms INTEGER,
    PRIMARY KEY (gateway, lane, seq)) WITHOUT ROWID;
CREATE TABLE readings (gateway TEXT NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    value REAL NOT NULL, seq INTEGER, batch_seq INTEGER NOT NULL);
CREATE TABLE alerts (gateway TEXT NOT NULL, seq INTEGER NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL,
    level TEXT NOT NULL, state TEXT NOT NULL, value REAL NOT NULL, threshold REAL NOT NULL,
    ts_ms INTEGER NOT NULL, rule TEXT NOT NULL, received_ms INTEGER NOT NULL);
CREATE TABLE events (gateway TEXT NOT NULL, seq INTEGER NOT NULL, device TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    body_json TEXT NOT NULL, received_ms INTEGER NOT NULL);
CREATE TABLE responses (gateway TEXT NOT NULL, seq INTEGER NOT NULL, device TEXT NOT NULL, body_json TEXT NOT NULL,
    received_ms INTEGER NOT NULL);
CREATE TABLE config_acks (gateway TEXT NOT NULL, seq INTEGER NOT NULL, body_json TEXT NOT NULL,
    received_ms INTEGER NOT NULL);
CREATE TABLE duplicates (gateway TEXT NOT NULL, lane TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (gateway, lane)) WITHOUT ROWID;
CREATE TABLE invalid (gateway TEXT NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (gateway, reason)) WITHOUT ROWID;
CREATE TABLE status (gateway TEXT PRIMARY KEY, state TEXT NOT NULL, since_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL) WITHOUT ROWID;
"""


def test_same_seq_in_a_new_stream_is_stored_and_a_true_duplicate_is_not(sink_db: str | Path) -> None:
    with open_sink_store(sink_db, durable=False) as store:
        assert store.store_batch(replace(batch(1), stream="aaaa"), T0)
        assert store.store_batch(replace(batch(1), stream="bbbb"), T0 + 1)  # wiped gateway, seq 1 again
        assert not store.store_batch(replace(batch(1), stream="bbbb"), T0 + 2)  # at-least-once resend
        assert store.store_control({**alert(1), "stream": "aaaa"}, T0)
        assert store.store_control({**alert(1), "stream": "bbbb"}, T0)
        assert not store.store_control({**alert(1), "stream": "bbbb"}, T0)
        assert store.count("readings") == 6 and store.duplicate_counts() == {("gw-1", "telemetry"): 1,
                                                                            ("gw-1", "control"): 1}
        assert [s.stream for s in store.streams()["gw-1"]] == ["aaaa", "bbbb"]
        assert rows(store, "SELECT DISTINCT stream FROM readings ORDER BY 1") == [("aaaa",), ("bbbb",)]


def test_gaps_are_per_stream(sink_db: str | Path) -> None:
    with open_sink_store(sink_db, durable=False) as store:
        for seq in (1, 2, 3):
            store.store_batch(replace(batch(seq), stream="old"), T0 + seq)
        for seq in (1, 3):
            store.store_batch(replace(batch(seq), stream="new"), T0 + 10 + seq)
        gap = store.gaps()[("gw-1", "telemetry")]
        assert (gap.ranges, gap.missing, gap.first, gap.first_streams) == (1, 1, [(2, 2)], ["new"])


def test_values_a_real_cannot_hold_are_kept_exactly(sink_db: str | Path) -> None:
    values = [2**64 - 1, -(2**63), 2**53 + 1, -0.0, 0.0, 1e308, 21.5]
    b = Batch("gw-1", 1, T0, [Reading("d", "m", T0 + i, v) for i, v in enumerate(values)], stream="s1")
    with open_sink_store(sink_db, durable=False) as store:
        store.store_batch(b, T0)
        got = rows(store, "SELECT value, value_text FROM readings ORDER BY ts_ms")
    exact = [int(text) if text and text.lstrip("-").isdigit() else float(text) if text else value
             for value, text in got]
    assert [repr(v) for v in exact] == [repr(v) for v in values]
    assert [text for _, text in got] == [str(2**64 - 1), str(-(2**63)), str(2**53 + 1), "-0.0", None, None, None]


def test_a_schema_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_V1 + "PRAGMA user_version=1;")
        db.execute("INSERT INTO batches VALUES ('gw-1', 'telemetry', 1, ?, 0, 1, ?)", (T0, T0))
        db.execute("INSERT INTO readings VALUES ('gw-1', 'd', 'm', ?, 1.5, NULL, 1)", (T0,))
    with pytest.raises(PermanentBridgeError, match="upgrade"):
        SinkStore.open_readonly(path)  # a report does not write: it says what to do
    with SinkStore(path, durable=False) as store:
        assert store.seqs("gw-1") == [1]
        assert not store.store_batch(batch(1), T0)  # the old key, now with stream '': still a duplicate
        assert store.store_batch(replace(batch(1), stream="n3w"), T0)  # a v2 gateway's seq 1: stored
        assert rows(store, "SELECT stream, value FROM readings WHERE batch_seq = 1 ORDER BY stream LIMIT 1") == [
            ("", 1.5)]
        assert rows(store, "PRAGMA user_version") == [(3,)]
    SinkStore.open_readonly(path).close()


def test_report_names_the_stream_of_each_gap_when_a_gateway_has_several(sink_db: str | Path) -> None:
    path = sink_db
    with open_sink_store(path, durable=False) as store:
        for seq in (1, 2, 3):
            store.store_batch(replace(batch(seq), stream="old"), T0 + seq)
        for seq in (1, 3):
            store.store_batch(replace(batch(seq), stream="new"), T0 + 10 + seq)
    report = build_report(path)
    assert [(s["stream"], s["missing_telemetry"], s["missing_control"])
            for s in report["gateways"]["gw-1"]["streams"]] == [("old", 0, 0), ("new", 1, 0)]  # per stream and lane
    console = Console(record=True, width=200)
    render_report(report, console)
    text = console.export_text()
    assert "gw-1 telemetry stream new: missing seqs 2" in text and "streams: old (3 batches" in text
    assert "new (2 batches" in text and "missing 1 telemetry)" in text
