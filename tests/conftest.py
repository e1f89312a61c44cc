from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from gateway.source.broker import BrokerAddress, EmbeddedBroker
from tests.postgres import SINK_PASSWORD, PostgresServer
from tests.support import Mosquitto, running_mosquitto


@pytest.fixture
async def amqtt_broker() -> AsyncIterator[EmbeddedBroker]:
    """A real embedded amqtt broker on 127.0.0.1 and a free port."""
    broker = EmbeddedBroker("127.0.0.1", 0)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@pytest.fixture
def amqtt_address(amqtt_broker: EmbeddedBroker) -> BrokerAddress:
    return amqtt_broker.address


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A real mosquitto process on a free port; tests may stop/kill/restart it on the same port."""
    with running_mosquitto() as broker:
        yield broker


@pytest.fixture
def persistent_mosquitto() -> Iterator[Mosquitto]:
    """mosquitto that keeps sessions and queued messages across stop/start on the same port."""
    with running_mosquitto(persistent=True) as broker:
        yield broker


# Hypothesis: the default "ci" profile keeps the suite fast; EDGE_HYPOTHESIS_PROFILE=fuzz runs the
# long fuzzing campaign (EDGE_FUZZ_EXAMPLES per property, default 1M), e.g. for
# tests/unit/test_decode_fuzz.py.
settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=int(os.environ.get("EDGE_FUZZ_EXAMPLES", "1000000")),
                          deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("EDGE_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (see tests/postgres.py); stopped at the end."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database of its own; the sink role's password is in PGPASSWORD, as libpq reads it."""
    monkeypatch.setenv("PGPASSWORD", SINK_PASSWORD)
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def sink_db(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """The --db of a fresh sink store, once per backend: a SQLite path, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path / "sink.sqlite"
    return str(request.getfixturevalue("pg_url"))
