"""The sink's group commit against a real mosquitto: PUBACKs in PUBLISH order (read from the broker's
own debug log), an invalid message in the middle of a group, and a storage failure in the middle of
the flow (a PostgreSQL connection killed) after which every message is stored exactly once."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.cloud.pg_store import PgSinkStore
from bridge.cloud.sink_group import GroupLimits
from bridge.cloud.sink_handler import Prepared
from bridge.cloud.sink_store import SinkStore
from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import Message
from bridge.protocol.topics import CloudTopics
from tests.e2e.test_sink import envelope, publish_all, publisher, running_sink
from tests.postgres import PostgresServer
from tests.support import Mosquitto, eventually, running_mosquitto

pytestmark = pytest.mark.timeout(90)

_SENT = re.compile(r"Sending PUBLISH to (\S+) \(d\d, q1, r\d, m(\d+),")
_ACKED = re.compile(r"Received PUBACK from (\S+) \(Mid: (\d+)")


@pytest.fixture
def chatty_mosquitto() -> Iterator[Mosquitto]:
    """mosquitto logging every packet, so a test can read the order of PUBLISHes and PUBACKs."""
    with running_mosquitto(extra_conf="log_type debug") as broker:
        yield broker


def flows(log: str, client_id: str) -> tuple[list[int], list[int]]:
    """The mids of the QoS 1 PUBLISHes mosquitto sent ``client_id`` and of its PUBACKs, in order."""
    sent = [int(m) for who, m in _SENT.findall(log) if who == client_id]
    acked = [int(m) for who, m in _ACKED.findall(log) if who == client_id]
    return sent, acked


async def publish_in_windows(pub: MqttConnection, messages: list[tuple[str, bytes]], window: int = 100) -> None:
    for start in range(0, len(messages), window):
        await publish_all(pub, messages[start:start + window])


async def test_a_group_is_acked_in_publish_order_and_an_invalid_message_does_not_hold_it_back(
        chatty_mosquitto: Mosquitto, tmp_path: Path) -> None:
    url, gw = chatty_mosquitto.url, CloudTopics("gw-1")
    n = 60
    messages = [(gw.telemetry, envelope("gw-1", seq)) for seq in range(1, n + 1)]
    messages[n // 2] = (gw.telemetry, b"\x01\x02not an envelope")  # seq n//2+1 never comes
    messages.insert(10, messages[5])  # a duplicate
    with SinkStore(tmp_path / "sink.sqlite", durable=False) as store:
        async with running_sink(url, store):  # creates the persistent session, then goes away
            pass
        async with publisher(url, "5") as pub:
            await publish_all(pub, messages)  # queued by the broker for the stopped sink
        async with running_sink(url, store) as sink:  # the whole backlog comes at once: groups
            c = sink.counters
            await eventually(lambda: c.handled == n + 1, message=lambda: f"{c}")
            assert (c.batches, c.duplicates, c.invalid, c.store_errors) == (n - 1, 1, 1, 0)
            assert c.groups < c.handled and c.largest_group > 1
            client_id = sink.settings.client_id
            await eventually(lambda: len(flows(chatty_mosquitto.log.read_text(), client_id)[1]) == n + 1)
        sent, acked = flows(chatty_mosquitto.log.read_text(), client_id)
        assert acked == sent  # every message acknowledged once, in the order it was sent
        assert store.seqs("gw-1") == [s for s in range(1, n + 1) if s != n // 2 + 1]
        assert store.count("readings") == (n - 1) * 5
        assert store.invalid_counts()["gw-1"] == {c.invalid_reasons.most_common(1)[0][0]: 1}


async def test_a_lost_database_connection_mid_flow_loses_nothing_and_stores_nothing_twice(
        mosquitto: Mosquitto, pg_url: str, postgres_server: PostgresServer) -> None:
    gw = CloudTopics("gw-1")
    n = 400
    with PgSinkStore(pg_url) as store:
        async with publisher(mosquitto.url, "5") as pub, running_sink(mosquitto.url, store) as sink:
            c = sink.counters
            batches = [(gw.telemetry, envelope("gw-1", s)) for s in range(1, n + 1)]
            flow = asyncio.create_task(publish_in_windows(pub, batches[:300]))
            await eventually(lambda: c.handled >= 20, message=lambda: f"{c}")
            assert postgres_server.terminate_sinks(pg_url.rsplit("/", 1)[1]) == 1
            await flow
            await publish_in_windows(pub, batches[300:])  # so that some surely come after the kill
            await eventually(lambda: store.count("batches") == n, timeout=30, message=lambda: f"{c}")
            assert c.store_errors >= 1 and c.connects >= 2  # the failed group came again
        assert store.seqs("gw-1") == list(range(1, n + 1))
        assert store.count("readings") == n * 5  # each reading once


async def test_a_locked_sqlite_database_fails_whole_groups_and_they_all_come_again(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    gw, path = CloudTopics("gw-1"), tmp_path / "sink.sqlite"
    batches = [(gw.telemetry, envelope("gw-1", s)) for s in range(1, 61)]
    with SinkStore(path, durable=False) as store:
        store._db.execute("PRAGMA busy_timeout=50")  # give up on the lock quickly (5 s by default)
        async with publisher(mosquitto.url, "5") as pub, running_sink(mosquitto.url, store) as sink:
            c = sink.counters
            await publish_all(pub, batches[:10])
            await eventually(lambda: c.batches == 10, message=lambda: f"{c}")
            blocker = sqlite3.connect(path, isolation_level=None)  # another writer holds the lock
            blocker.execute("BEGIN IMMEDIATE")
            try:
                await publish_in_windows(pub, batches[10:])
                await eventually(lambda: c.store_errors >= 2, message=lambda: f"{c}")
                assert c.batches == 10  # nothing stored, so nothing acknowledged
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            await eventually(lambda: c.batches == 60, message=lambda: f"{c}")
        assert store.seqs("gw-1") == list(range(1, 61))
        assert store.count("readings") == 60 * 5 and store.duplicate_counts() == {}


@pytest.mark.parametrize(("limits", "largest"), [(GroupLimits(max_messages=7), 7),
                                                 (GroupLimits(max_readings=12), 3)])  # 5 readings a batch
async def test_a_group_stays_within_its_limits(mosquitto: Mosquitto, tmp_path: Path, limits: GroupLimits,
                                               largest: int) -> None:
    gw, n = CloudTopics("gw-1"), 40
    with SinkStore(tmp_path / "sink.sqlite", durable=False) as store:
        async with running_sink(mosquitto.url, store, group_limits=limits):  # the persistent session
            pass
        async with publisher(mosquitto.url, "5") as pub:
            await publish_all(pub, [(gw.telemetry, envelope("gw-1", s)) for s in range(1, n + 1)])
        async with running_sink(mosquitto.url, store, group_limits=limits) as sink:
            c = sink.counters
            await eventually(lambda: c.batches == n, message=lambda: f"{c}")
            assert 1 < c.largest_group <= largest
            assert c.groups >= n // largest


async def test_a_message_that_breaks_the_handler_is_counted_and_acked_and_its_group_stored(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    gw = CloudTopics("gw-1")
    with SinkStore(tmp_path / "sink.sqlite", durable=False) as store:
        async with publisher(mosquitto.url, "5") as pub, running_sink(mosquitto.url, store) as sink:
            prepare = sink.handler.prepare

            def breaks_on_seq_2(message: Message) -> Prepared:
                if message.payload == envelope("gw-1", 2):
                    raise RuntimeError("a bug")
                return prepare(message)

            sink.handler.prepare = breaks_on_seq_2  # type: ignore[method-assign]
            await publish_all(pub, [(gw.telemetry, envelope("gw-1", s)) for s in (1, 2, 3)])
            c = sink.counters
            await eventually(lambda: c.handled == 3, message=lambda: f"{c}")
            assert c.invalid_reasons == {"internal error": 1} and c.store_errors == 0
        assert store.seqs("gw-1") == [1, 3]
