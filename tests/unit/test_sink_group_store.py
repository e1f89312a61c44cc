"""Group commit in the stores (``store_group``), against both backends: one transaction per group,
a message the database refuses left out alone, duplicates inside a group, a storage failure leaving
nothing of the group, and the property that any split into groups stores what one-by-one does."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.cloud.errors import SinkStoreError
from bridge.cloud.sink_port import SinkStorePort, open_sink_store
from bridge.cloud.sink_store import SinkStore
from bridge.cloud.sink_writes import BatchWrite, ControlWrite, InvalidWrite, Outcome, StatusWrite, Write
from bridge.protocol.errors import InvalidRecord
from bridge.protocol.model import Reading
from bridge.protocol.records import parse_control
from tests.postgres import PostgresServer
from tests.unit.test_sink_store import T0, alert, batch, event, rows

TABLES = ("batches", "readings", "alerts", "events", "responses", "config_acks", "duplicates", "invalid", "status")


def poison_device(db: str | Path) -> str:
    """A device name the database refuses inside a batch: PostgreSQL text cannot hold NUL; SQLite
    can, so there a trigger refuses the name (an IntegrityError, as a constraint would)."""
    if isinstance(db, str):
        return "dev\x00nul"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TRIGGER IF NOT EXISTS boom BEFORE INSERT ON readings WHEN NEW.device = 'boom'"
                     " BEGIN SELECT RAISE(ABORT, 'refused by the database'); END")
    return "boom"


@pytest.fixture
def opened(sink_db: str | Path) -> Iterator[tuple[SinkStorePort, str]]:
    """A store of either backend and the device name its database refuses."""
    with open_sink_store(sink_db, durable=False) as store:
        yield store, poison_device(sink_db)


def bw(seq: int, gateway: str = "gw-1", n: int = 3, device: str | None = None) -> BatchWrite:
    b = batch(seq, gateway, n)
    if device is not None:
        b.readings.append(Reading(device, "temp", T0, 1.0, None))
    return BatchWrite(b, T0 + seq)


def dump(store: SinkStorePort, gateway_prefix: str = "") -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (of the gateways whose id starts with ``gateway_prefix``)."""
    where = f" WHERE substr(gateway, 1, {len(gateway_prefix)}) = '{gateway_prefix}'" if gateway_prefix else ""
    return {t: sorted(rows(store, f"SELECT * FROM {t}{where}"), key=repr) for t in TABLES}


def test_a_refused_message_in_the_middle_leaves_the_others_stored(opened: tuple[SinkStorePort, str]) -> None:
    store, poison = opened
    writes: list[Write] = [bw(1), bw(2, device=poison), bw(3), InvalidWrite("gw-1", "gateway mismatch"),
                           StatusWrite("gw-1", "online", T0)]
    outcomes = store.store_group(writes)
    assert outcomes[0] is True and outcomes[2] is True and outcomes[3:] == [True, True]
    refused = outcomes[1]
    assert isinstance(refused, InvalidRecord) and refused.reason == "malformed batch"
    assert store.seqs("gw-1") == [1, 3]
    assert store.count("readings") == 6  # none of seq 2's
    assert store.invalid_counts() == {"gw-1": {"malformed batch": 1, "gateway mismatch": 1}}
    assert store.statuses()["gw-1"].state == "online"
    assert store.store_group([bw(2)]) == [True]  # its key stayed free


def test_duplicates_inside_a_group_are_stored_once_and_counted(opened: tuple[SinkStorePort, str]) -> None:
    store, _ = opened
    assert store.store_group([bw(1)]) == [True]
    stamped = parse_control(alert(1))
    writes: list[Write] = [bw(2), bw(1), bw(2), ControlWrite(stamped, T0), ControlWrite(stamped, T0), bw(3)]
    assert store.store_group(writes) == [True, False, False, True, False, True]
    assert store.seqs("gw-1") == [1, 2, 3]
    assert store.count("readings") == 9 and store.count("alerts") == 1
    assert store.duplicate_counts() == {("gw-1", "telemetry"): 2, ("gw-1", "control"): 1}


def test_a_storage_failure_leaves_nothing_of_the_group(tmp_path: Path) -> None:
    path = tmp_path / "sink.sqlite"
    SinkStore(path).close()
    with sqlite3.connect(path) as db:  # an alert insert that fails like a full disk would
        db.execute("CREATE TRIGGER full BEFORE INSERT ON alerts BEGIN SELECT RAISE(FAIL, 'disk is full'); END")
    with SinkStore(path) as store:
        group: list[Write] = [bw(1), InvalidWrite("gw-1", "bad status"), ControlWrite(parse_control(alert(1)), T0)]
        with pytest.raises(SinkStoreError, match="disk is full"):
            store.store_group(group)
        assert dump(store) == dump_empty()
        with sqlite3.connect(path) as db:
            db.execute("DROP TRIGGER full")
        assert store.store_group(group) == [True, True, True]  # the redelivery


def dump_empty() -> dict[str, list[tuple[Any, ...]]]:
    return {t: [] for t in TABLES}


def test_a_lost_postgres_connection_fails_the_whole_group(pg_url: str, postgres_server: PostgresServer) -> None:
    with open_sink_store(pg_url) as store:
        assert store.store_group([bw(1)]) == [True]
        assert postgres_server.terminate_sinks(pg_url.rsplit("/", 1)[1]) == 1
        group: list[Write] = [bw(2), bw(3), StatusWrite("gw-1", "online", T0)]
        with pytest.raises(SinkStoreError):
            store.store_group(group)
        assert store.seqs("gw-1") == [1] and store.statuses() == {}
        assert store.store_group(group) == [True, True, True]  # reconnected: the redelivery
        assert store.store_group(group[:2]) == [False, False]
        assert store.count("readings") == 9


def one_by_one(store: SinkStorePort, write: Write) -> None:
    """The reference: each message in its own transaction through the single-message calls."""
    if isinstance(write, BatchWrite):
        try:
            store.store_batch(write.batch, write.received_ms)
        except InvalidRecord as exc:
            store.record_invalid(write.batch.gateway, exc.reason)
    elif isinstance(write, ControlWrite):
        store.store_control(write.record, write.received_ms)
    elif isinstance(write, InvalidWrite):
        store.record_invalid(write.gateway, write.reason)
    else:
        assert isinstance(write, StatusWrite)
        store.record_status(write.gateway, write.state, write.received_ms)


_EXAMPLES = itertools.count()
_WRITE = st.tuples(st.sampled_from(["batch", "poison", "alert", "event", "invalid", "status"]),
                   st.integers(0, 1), st.integers(0, 4), st.integers(1, 3))


def make_write(spec: tuple[str, int, int, int], i: int, prefix: str, poison: str) -> Write:
    kind, g, seq, n = spec
    gateway = f"{prefix}{g}"
    if kind in ("batch", "poison"):
        return BatchWrite(batch(seq, gateway, n), T0 + i) if kind == "batch" else bw(seq, gateway, n, poison)
    if kind in ("alert", "event"):
        return ControlWrite(parse_control((alert if kind == "alert" else event)(seq, gateway)), T0 + i)
    if kind == "invalid":
        return InvalidWrite(gateway, ("gateway mismatch", "bad status")[n % 2])
    return StatusWrite(gateway, ("online", "offline")[n % 2], T0 + i // 2)


@pytest.fixture
def pair(sink_db: str | Path, request: pytest.FixtureRequest,
         tmp_path: Path) -> Iterator[tuple[SinkStorePort, SinkStorePort, str]]:
    """Two stores of the same backend (grouped, reference) and the poison device name."""
    other: str | Path = (request.getfixturevalue("postgres_server").new_database() if isinstance(sink_db, str)
                         else tmp_path / "ref.sqlite")
    with open_sink_store(sink_db, durable=False) as grouped, open_sink_store(other, durable=False) as reference:
        poison_device(other)
        yield grouped, reference, poison_device(sink_db)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(_WRITE, max_size=14), cuts=st.lists(st.integers(1, 6), max_size=14))
def test_any_split_into_groups_stores_what_one_by_one_does(pair: tuple[SinkStorePort, SinkStorePort, str],
                                                           specs: list[tuple[str, int, int, int]],
                                                           cuts: list[int]) -> None:
    grouped, reference, poison = pair
    prefix = f"x{next(_EXAMPLES)}-"  # one database pair for all examples: each has its own gateways
    writes = [make_write(spec, i, prefix, poison) for i, spec in enumerate(specs)]
    outcomes: list[Outcome] = []
    start = 0
    for size in [*cuts, len(writes)]:
        if start < len(writes):
            outcomes += grouped.store_group(writes[start:start + size])
        start += size
    for write in writes:
        one_by_one(reference, write)
    assert dump(grouped, prefix) == dump(reference, prefix)
    assert len(outcomes) == len(writes)
    refused = [isinstance(w, BatchWrite) and any(r.device == poison for r in w.batch.readings) for w in writes]
    # only a poisoned batch is refused (one whose key was stored before is a duplicate instead)
    assert all(poisoned for o, poisoned in zip(outcomes, refused, strict=True) if isinstance(o, InvalidRecord))
