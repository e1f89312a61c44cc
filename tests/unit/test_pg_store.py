"""What only the PostgreSQL sink store has: migrations under a lock, several workers on one database,
credentials kept out of sight, reconnecting after a lost connection, the timestamp column. (What both
stores share runs against both in test_sink_store*.py.)"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.cloud.errors import SinkStoreError, StoreUnavailable, StoreUnreachable
from bridge.cloud.pg_schema import SCHEMA_VERSION, migrate
from bridge.cloud.pg_store import PgSinkStore
from bridge.cloud.pg_url import redact_url
from bridge.protocol.codec import Batch
from bridge.protocol.errors import InvalidRecord, PermanentBridgeError
from bridge.protocol.model import Reading
from tests.postgres import SINK_PASSWORD, PostgresServer
from tests.support import free_port
from tests.unit.test_sink_store import T0, batch

R = TypeVar("R")


def in_threads(n: int, work: Callable[[int], R]) -> list[R]:
    """Run ``work(i)`` for i < n on n threads released at once; their results (or the first error)."""
    start = threading.Barrier(n)

    def run(i: int) -> R:
        start.wait(30)
        return work(i)

    with ThreadPoolExecutor(n) as pool:
        return [f.result(60) for f in [pool.submit(run, i) for i in range(n)]]


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_migrations_are_idempotent_and_concurrent_starts_apply_them_once(pg_url: str) -> None:
    def open_one(_: int) -> int:
        with PgSinkStore(pg_url) as store:
            return len(store._rows("SELECT version FROM schema_migrations"))

    assert in_threads(3, open_one) == [SCHEMA_VERSION] * 3
    with PgSinkStore(pg_url) as store:  # and once more, later
        assert store._rows("SELECT version FROM schema_migrations") == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        assert store._rows("SELECT to_regclass('gaps')::text") == [("gaps",)]


def test_the_gaps_view_shows_the_holes_the_report_counts(pg_url: str) -> None:
    with PgSinkStore(pg_url) as store:
        for seq in (1, 2, 5, 9):
            store.store_batch(batch(seq), T0)
        store.store_batch(replace(batch(4), stream="other"), T0)
        assert store._rows("SELECT gateway, stream, lane, first_missing, last_missing FROM gaps ORDER BY 4") == [
            ("gw-1", "", "telemetry", 3, 4), ("gw-1", "", "telemetry", 6, 8)]
        assert store.gaps()[("gw-1", "telemetry")].first == [(3, 4), (6, 8)]


def test_a_database_from_the_future_is_refused(pg_url: str) -> None:
    with PgSinkStore(pg_url) as store:
        store._rows("INSERT INTO schema_migrations (version) VALUES (?) RETURNING version", (SCHEMA_VERSION + 1,))
    for readonly in (False, True):
        with pytest.raises(PermanentBridgeError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
            PgSinkStore(pg_url, readonly=readonly)


def test_a_report_on_an_empty_database_says_it_is_not_a_sink_database(pg_url: str) -> None:
    with pytest.raises(PermanentBridgeError, match="not a sink database"):
        PgSinkStore.open_readonly(pg_url)


def test_the_same_batches_from_several_workers_are_stored_once(pg_url: str) -> None:
    batches = [batch(seq, n=4) for seq in range(1, 31)]

    def worker(i: int) -> int:
        mine = batches[:]
        random.Random(i).shuffle(mine)
        with PgSinkStore(pg_url) as store:
            return sum(store.store_batch(b, T0) for b in mine)

    assert sum(in_threads(4, worker)) == 30  # each batch won by exactly one worker
    with PgSinkStore.open_readonly(pg_url) as store:
        assert store.count("readings") == 30 * 4
        assert store.duplicate_counts() == {("gw-1", "telemetry"): 3 * 30}
        assert store.gaps() == {}


_GATEWAYS = iter(range(10**6))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seqs=st.lists(st.integers(0, 12), max_size=25), resend_replayed=st.booleans())
def test_any_order_with_duplicates_stores_each_unique_batch_once(pg_url: str, seqs: list[int],
                                                                  resend_replayed: bool) -> None:
    gateway = f"gw-{next(_GATEWAYS)}"  # one database for all examples: each example has its own gateway
    with PgSinkStore(pg_url) as store:
        new = [store.store_batch(replace(batch(seq, gateway, n=2), replay=resend_replayed and i % 2 == 1), T0)
               for i, seq in enumerate(seqs)]
        got = store._rows("SELECT batch_seq, device, metric, ts_ms, value, seq FROM readings WHERE gateway = ?"
                          " ORDER BY 1, 4", (gateway,))
    unique = sorted(set(seqs))
    assert sum(new) == len(unique)
    assert got == [(s, r.device, r.metric, r.ts_ms, r.value, r.seq)
                   for s in unique for r in batch(s, gateway, n=2).readings]


def test_a_lost_connection_fails_one_call_and_the_next_reconnects(pg_url: str,
                                                                   postgres_server: PostgresServer) -> None:
    with PgSinkStore(pg_url) as store:
        assert store.store_batch(batch(1), T0)
        assert postgres_server.terminate_sinks(dbname(pg_url)) == 1
        with pytest.raises(SinkStoreError, match="sink database postgresql://sink@") as err:
            store.store_batch(batch(2), T0)
        assert SINK_PASSWORD not in str(err.value)
        assert store.store_batch(batch(2), T0)  # the redelivery: reconnected, stored
        assert not store.store_batch(batch(2), T0)
        assert store.seqs("gw-1") == [1, 2] and store.count("readings") == 6


def test_a_value_postgres_cannot_hold_is_an_invalid_record_not_a_storage_failure(pg_url: str) -> None:
    with PgSinkStore(pg_url) as store:
        with pytest.raises(InvalidRecord):  # PostgreSQL text cannot hold NUL (SQLite can)
            store.store_batch(Batch("gw-1", 1, T0, [Reading("dev\x00", "m", T0, 1.0)]), T0)
        assert store.count("batches") == 0
        assert store.store_batch(batch(1), T0)


def test_ts_is_the_timestamp_of_ts_ms_clamped_to_what_it_can_hold(pg_url: str) -> None:
    extremes = [Reading("d", "m", ms, 1.0) for ms in (T0 + 123, -(2**63), 2**63 - 1)]
    with PgSinkStore(pg_url) as store:
        store.store_batch(Batch("gw-1", 1, T0, extremes), T0)
        got = store._rows("SELECT ts_ms, ts FROM readings ORDER BY ts_ms")
    assert [ms for ms, _ in got] == [-(2**63), T0 + 123, 2**63 - 1]
    assert got[1][1] == datetime.fromtimestamp((T0 + 123) / 1000, timezone.utc)
    assert (got[0][1].year, got[2][1].year) == (1, 9999)


def test_credentials_by_file_and_never_in_identity_logs_or_errors(pg_url: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("PGPASSWORD")
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    secret = tmp_path / "pw"
    secret.write_text(SINK_PASSWORD + "\n")
    with PgSinkStore(pg_url, password_file=secret) as store:
        assert store.identity == pg_url
    secret.write_text("wrong-password\n")
    with pytest.raises(StoreUnavailable, match=r"password authentication failed.*\(--db\)") as err:
        PgSinkStore(pg_url, password_file=secret)
    assert "wrong-password" not in str(err.value)
    with_password = pg_url.replace("sink@", f"sink:{SINK_PASSWORD}@")
    with caplog.at_level(logging.WARNING), PgSinkStore(with_password) as store:
        assert store.identity == pg_url
    assert "visible in process lists" in caplog.text and SINK_PASSWORD not in caplog.text
    assert redact_url(f"postgresql://u:p@h:5/d?password={SINK_PASSWORD}") == "postgresql://u@h:5/d"
    with pytest.raises(StoreUnreachable, match=r"cannot connect .*127\.0\.0\.1.*\(--db\)"):  # nothing listens there
        PgSinkStore(f"postgresql://sink@127.0.0.1:{free_port()}/{dbname(pg_url)}", connect_timeout_s=2)


def test_once_the_schema_is_there_a_role_without_create_can_run_the_sink(pg_url: str, postgres_server: PostgresServer,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    PgSinkStore(pg_url).close()  # the owner sets the schema up
    writer = f"writer_{dbname(pg_url)}"  # roles are cluster-wide: one per test database
    with postgres_server.admin(dbname(pg_url)) as admin:
        admin.execute(f"CREATE ROLE {writer} LOGIN PASSWORD 'writer-pw'")
        admin.execute(f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {writer}")
        assert admin.execute(f"SELECT has_schema_privilege('{writer}', 'public', 'CREATE')").fetchone() == (False,)
    monkeypatch.setenv("PGPASSWORD", "writer-pw")
    with PgSinkStore(pg_url.replace("sink@", f"{writer}@")) as store:
        assert store.store_batch(batch(1), T0) and not store.store_batch(batch(1), T0)
        assert store.count("readings") == 3


def test_a_database_of_the_previous_version_is_migrated_on_start_and_keeps_its_rows(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn, conn.transaction():
        assert migrate(conn, "test", target=SCHEMA_VERSION - 1) == SCHEMA_VERSION - 1
        conn.execute("INSERT INTO batches (gateway, stream, lane, seq, received_ms, replay, readings, created_ms)"
                     " VALUES ('gw-1', 's1', 'telemetry', 1, 1, false, 0, 1)")
    with PgSinkStore(pg_url) as store:  # what a worker of the new version does on start
        assert store._rows("SELECT max(version) FROM schema_migrations") == [(SCHEMA_VERSION,)]
        assert store._rows("SELECT to_regclass('readings_ts')::text, to_regclass('batches_received')::text") == [
            ("readings_ts", "batches_received")]
        assert store.seqs("gw-1") == [1]
        assert store.store_batch(replace(batch(1), stream="s1"), T0) is False  # the old row still dedups
        assert store.store_batch(replace(batch(2), stream="s1"), T0) is True


def test_without_timescaledb_readings_stay_a_plain_table(pg_url: str) -> None:
    with PgSinkStore(pg_url) as store:
        assert store._rows("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") == [(0,)]
        assert store._rows("SELECT relkind::text FROM pg_class WHERE relname = 'readings'") == [("r",)]


def test_refused_for_good_or_for_now_decides_the_exit_code(pg_url: str, tmp_path: Path) -> None:
    """Wrong password and no such database: StoreUnavailable but not StoreUnreachable (exit 2, not
    restarted); nothing listening: StoreUnreachable (exit 1, a service manager restarts the worker)."""
    from click.testing import CliRunner

    from gateway.cli import main

    base = pg_url.rsplit("/", 1)[0]
    for url, password in ((pg_url, "wrong"), (f"{base}/no_such_db", SINK_PASSWORD)):
        secret = tmp_path / "pw"
        secret.write_text(password)
        with pytest.raises(StoreUnavailable) as err:
            PgSinkStore(url, password_file=secret)
        assert not isinstance(err.value, StoreUnreachable), err.value
    down = f"postgresql://sink@127.0.0.1:{free_port()}/x"
    res = CliRunner().invoke(main, ["sink", "--url", "mqtt://127.0.0.1:1", "--db", down])
    assert res.exit_code == 1 and "retrying may help" in res.output


def test_a_writer_commits_synchronously_whatever_the_servers_default(pg_url: str,
                                                                      postgres_server: PostgresServer) -> None:
    """The ack follows the commit: with ``synchronous_commit = off`` set on the database, the sink's
    session still commits to disk; a stuck statement times out."""
    with postgres_server.admin() as admin:
        admin.execute(f"ALTER DATABASE {dbname(pg_url)} SET synchronous_commit = off")
    with PgSinkStore(pg_url) as store:
        assert store._rows("SHOW synchronous_commit") == [("on",)]
        assert store._rows("SHOW statement_timeout") == [("1min",)]
    with PgSinkStore(pg_url, readonly=True) as report:
        assert report._rows("SHOW synchronous_commit") == [("off",)]  # the database's default reached us
