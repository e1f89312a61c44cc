"""The sink's store: dedup by (gateway, lane, seq), gaps, atomic batches, control records. The tests taking
``store`` run against both backends (SQLite and PostgreSQL, see ``sink_db`` in tests/conftest.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from bridge.cloud.errors import SinkStoreError, StoreUnavailable
from bridge.cloud.sink_port import SinkStorePort, open_sink_store
from bridge.cloud.sink_queries import SinkQueries
from bridge.cloud.sink_store import GapSummary, InvalidRecord, SinkStore
from bridge.mqtt.errors import PermanentBridgeError
from bridge.protocol.codec import Batch
from bridge.protocol.model import Reading
from bridge.protocol.records import Response, parse_control

T0 = 1_700_000_000_000


def batch(seq: int, gateway: str = "gw-1", n: int = 3, *, replay: bool = False) -> Batch:
    readings = [Reading("dev-1", "temp", T0 + seq * 1000 + i, 20.5 + i, i) for i in range(n)]
    return Batch(gateway=gateway, seq=seq, created_ms=T0 + seq, readings=readings, replay=replay)


def rows(store: SinkStorePort, sql: str) -> list[tuple[Any, ...]]:
    """Read the database: a SQLite file through a connection of its own, PostgreSQL through the store's."""
    if isinstance(store, SinkStore):
        with sqlite3.connect(store.path) as db:
            return db.execute(sql).fetchall()
    return cast(SinkQueries, store)._rows(sql)


def alert(seq: int, gateway: str = "gw-1", state: str = "raised") -> dict[str, Any]:
    return {"kind": "alert", "gw": gateway, "seq": seq, "device": "dev-1", "metric": "temp", "level": "max",
            "state": state, "value": 81.5, "threshold": 80.0, "ts_ms": 1_700_000_000_123, "rule": "temp-high"}


def event(seq: int, gateway: str = "gw-1") -> dict[str, Any]:
    return {"kind": "event", "gw": gateway, "seq": seq, "device": "dev-2", "ts_ms": 1_700_000_000_500,
            "event": {"type": "door", "open": True}}


def response(seq: int, gateway: str = "gw-1") -> dict[str, Any]:
    return {"kind": "response", "gw": gateway, "seq": seq, "device": "dev-2", "command": "ping", "id": "c1",
            "status": "ok", "result": {"ts": 1}, "source": "device", "rtt_ms": 1.5}


@pytest.fixture
def store(sink_db: str | Path) -> Iterator[SinkStorePort]:
    with open_sink_store(sink_db, durable=False) as s:
        yield s


def test_batch_is_stored_once(store: SinkStorePort) -> None:
    assert store.store_batch(batch(1), 1000) is True
    assert store.store_batch(batch(1), 2000) is False
    assert store.store_batch(batch(1, replay=True), 3000) is False
    assert store.count("readings") == 3
    assert store.count("batches") == 1
    assert store.duplicate_counts() == {("gw-1", "telemetry"): 2}
    stats = store.lane_stats()[("gw-1", "telemetry")]
    assert (stats.records, stats.readings, stats.replayed, stats.last_received_ms) == (1, 3, 0, 1000)


def test_dedup_key_includes_gateway_and_lane(store: SinkStorePort) -> None:
    assert store.store_batch(batch(7, "gw-1"), 1)
    assert store.store_batch(batch(7, "gw-2"), 1)
    assert store.store_control(alert(7, "gw-1"), 1)  # same seq, other lane
    assert store.duplicate_counts() == {}
    assert store.seqs("gw-1") == [7]
    assert store.seqs("gw-1", "control") == [7]
    assert store.gateways() == ["gw-1", "gw-2"]


def test_readings_keep_their_fields(store: SinkStorePort) -> None:
    b = Batch("gw-1", 4, 5, [Reading("d", "m", 10, 1.25, None), Reading("d", "n", 11, -3.0, 9)])
    store.store_batch(b, 100)
    got = rows(store, "SELECT gateway, device, metric, ts_ms, value, seq, batch_seq FROM readings ORDER BY 4")
    assert got == [("gw-1", "d", "m", 10, 1.25, None, 4), ("gw-1", "d", "n", 11, -3.0, 9, 4)]


def test_gaps_between_lowest_and_highest_seq(store: SinkStorePort) -> None:
    for seq in (1, 2, 5, 6, 9):
        store.store_batch(batch(seq), 0)
    assert store.gaps() == {("gw-1", "telemetry"): GapSummary(ranges=2, missing=4, first=[(3, 4), (7, 8)])}


def test_gap_filled_later_no_longer_counts(store: SinkStorePort) -> None:
    for seq in (10, 11, 14, 16):
        store.store_batch(batch(seq), 0)
    assert store.gaps()[("gw-1", "telemetry")].missing == 3
    store.store_batch(batch(12, replay=True), 0)
    store.store_batch(batch(13, replay=True), 0)
    assert store.gaps() == {("gw-1", "telemetry"): GapSummary(1, 1, [(15, 15)])}
    store.store_batch(batch(15, replay=True), 0)
    assert store.gaps() == {}
    assert store.lane_stats()[("gw-1", "telemetry")].replayed == 3


def test_gaps_per_gateway_and_lane_with_limit(store: SinkStorePort) -> None:
    for seq in range(0, 100, 2):  # 49 single-seq holes
        store.store_batch(batch(seq, "gw-a", n=1), 0)
    store.store_batch(batch(1, "gw-b"), 0)
    store.store_batch(batch(2, "gw-b"), 0)
    store.store_control(alert(1, "gw-b"), 0)
    store.store_control(event(5, "gw-b"), 0)
    gaps = store.gaps(limit=20)
    assert set(gaps) == {("gw-a", "telemetry"), ("gw-b", "control")}
    assert gaps[("gw-a", "telemetry")].ranges == 49
    assert gaps[("gw-a", "telemetry")].missing == 49
    assert gaps[("gw-a", "telemetry")].first == [(s, s) for s in range(1, 40, 2)]
    assert gaps[("gw-b", "control")] == GapSummary(1, 3, [(2, 4)])


def test_batch_insert_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sink.sqlite"
    SinkStore(path).close()
    with sqlite3.connect(path) as db:  # make the 3rd reading of a batch fail inside the transaction
        db.execute("CREATE TRIGGER boom BEFORE INSERT ON readings WHEN NEW.device = 'boom'"
                   " BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
    with SinkStore(path) as store:
        store.store_batch(batch(1), 0)
        bad = batch(2)
        bad.readings.append(Reading("boom", "temp", 1, 1.0))
        bad.readings.append(Reading("dev-1", "temp", 2, 2.0))
        with pytest.raises(InvalidRecord, match="injected failure"):
            store.store_batch(bad, 0)
        assert store.seqs("gw-1") == [1]  # no ledger row for seq 2 ...
        assert store.count("readings") == 3  # ... and none of its readings
        assert store.duplicate_counts() == {}
        assert store.store_batch(batch(2), 0) is True  # the key is still free


def test_non_finite_value_is_invalid_and_nothing_stored(store: SinkStorePort) -> None:
    bad = Batch("gw-1", 1, 0, [Reading("d", "m", 1, 1.0), Reading("d", "m", 2, float("nan"))])
    with pytest.raises(InvalidRecord) as err:
        store.store_batch(bad, 0)
    assert err.value.reason == "non-finite value"
    assert store.count("batches") == store.count("readings") == 0


def test_control_records_stored_and_deduplicated(store: SinkStorePort) -> None:
    assert store.store_control(alert(1), 10)
    assert store.store_control(alert(2, state="cleared"), 11)
    assert store.store_control(event(3), 12)
    assert store.store_control(response(4), 13)
    assert store.store_control({"kind": "config_status", "gw": "gw-1", "seq": 5, "version": 3,
                                "status": "applied", "errors": [], "current_version": 3}, 13)
    assert not store.store_control(alert(1), 14)
    assert not store.store_control(event(3), 15)
    assert store.duplicate_counts() == {("gw-1", "control"): 2}
    assert (store.count("alerts"), store.count("events"), store.count("responses")) == (2, 1, 1)
    assert rows(store, "SELECT COUNT(*) FROM config_acks") == [(1,)]
    assert store.gaps() == {}  # config acks share the control sequence: no phantom gap
    row = rows(store, "SELECT device, metric, level, state, value, threshold, ts_ms, rule FROM alerts"
                      " WHERE seq = 1")
    assert row[0] == ("dev-1", "temp", "max", "raised", 81.5, 80.0, 1_700_000_000_123, "temp-high")
    assert rows(store, "SELECT body_json FROM events")[0][0] == '{"open":true,"type":"door"}'


@pytest.mark.parametrize(("change", "reason"), [
    ({"kind": "ack"}, "unknown kind"),
    ({"seq": True}, "malformed record"),
    ({"seq": -1}, "malformed record"),
    ({"seq": 2**70}, "malformed record"),
    ({"gw": "a/b"}, "bad gateway id"),
    ({"value": float("inf")}, "malformed record"),
    ({"metric": None}, "malformed record"),
    ({"state": "maybe"}, "malformed record"),
])
def test_malformed_control_records(store: SinkStorePort, change: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidRecord) as err:
        store.store_control({**alert(1), **change}, 0)
    assert err.value.reason == reason
    assert store.count("batches") == store.count("alerts") == 0


def test_parse_control_event_needs_an_object_body() -> None:
    with pytest.raises(InvalidRecord, match="'event' must be an object"):
        parse_control({**event(1), "event": [1, 2]})



def test_a_response_is_stored_with_its_flat_fields_and_may_have_an_empty_device(store: SinkStorePort) -> None:
    assert store.store_control(response(3), 0)
    assert rows(store, "SELECT body_json FROM responses") == [
        ('{"command":"ping","id":"c1","result":{"ts":1},"rtt_ms":1.5,"source":"device","status":"ok"}',)]
    rejected = {**response(4), "device": "", "command": "", "id": None, "status": "rejected", "source": "gateway"}
    assert parse_control(rejected).record == Response("", "", None, "rejected", {"ts": 1}, "gateway", 1.5)
    with pytest.raises(InvalidRecord, match="'status'"):
        parse_control({**response(5), "status": None})


def test_status_keeps_since_while_state_unchanged(store: SinkStorePort) -> None:
    store.record_status("gw-1", "online", 100)
    store.record_status("gw-1", "online", 200)  # retained status redelivered on reconnect
    s = store.statuses()["gw-1"]
    assert (s.state, s.since_ms, s.received_ms) == ("online", 100, 200)
    store.record_status("gw-1", "offline", 300)
    s = store.statuses()["gw-1"]
    assert (s.state, s.since_ms, s.received_ms) == ("offline", 300, 300)


def test_invalid_counts(store: SinkStorePort) -> None:
    store.record_invalid("gw-1", "bad zlib body")
    store.record_invalid("gw-1", "bad zlib body")
    store.record_invalid("gw-2", "gateway mismatch")
    assert store.invalid_counts() == {"gw-1": {"bad zlib body": 2}, "gw-2": {"gateway mismatch": 1}}
    assert store.gateways() == ["gw-1", "gw-2"]


def test_dedup_survives_reopen_and_readonly_sees_data(sink_db: str | Path) -> None:
    with open_sink_store(sink_db) as s:
        s.store_batch(batch(1), 0)
    with open_sink_store(sink_db) as s:
        assert s.store_batch(batch(1), 0) is False
        with open_sink_store(sink_db, readonly=True) as ro:  # a report while the sink is open
            assert ro.seqs("gw-1") == [1]
            assert ro.duplicate_counts() == {("gw-1", "telemetry"): 1}
            with pytest.raises(SinkStoreError, match=r"readonly|read-only"):
                ro.record_invalid("gw-1", "x")


def test_readonly_needs_an_existing_sink_database(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SinkStore.open_readonly(tmp_path / "missing.sqlite")
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).close()
    with pytest.raises(PermanentBridgeError, match="not a sink database"):
        SinkStore.open_readonly(other)


def test_sqlite_errors_come_out_as_sink_store_errors(tmp_path: Path) -> None:
    path = tmp_path / "sink.sqlite"
    SinkStore(path).close()
    with sqlite3.connect(path) as db:  # a control insert that SQLite refuses
        db.execute("CREATE TRIGGER boom BEFORE INSERT ON alerts BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
    with SinkStore(path) as store:
        with pytest.raises(SinkStoreError, match="injected failure") as err:
            store.store_control(alert(1), 0)
        assert isinstance(err.value.__cause__, sqlite3.Error)
        assert store.seqs("gw-1", "control") == []  # rolled back with the ledger row
        with sqlite3.connect(path) as db:  # a table gone under the open store
            db.execute("DROP TABLE status")
        with pytest.raises(SinkStoreError, match="no such table"):
            store.statuses()
        with pytest.raises(SinkStoreError, match="no such table"):
            store.record_status("gw-1", "online", 0)


def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "sink.sqlite"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreUnavailable):
        SinkStore.open_readonly(path)
