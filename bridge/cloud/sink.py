"""The cloud-side sink: subscribe to every gateway's uplink topics and store what arrives, once.

Delivery: the sink subscribes with QoS 1 on a persistent session (stable client id, ``clean_start``
off, MQTT 5 session expiry) and acknowledges each message only AFTER it has been committed to its
store, SQLite or PostgreSQL (``ClientSettings.manual_ack``). A sink that dies between receiving and
committing leaves the message unacknowledged; the broker redelivers it when the session resumes, and
the store's ``(gateway, stream, lane, seq)`` key drops whatever had already been stored.
At-least-once delivery plus an idempotent store gives each reading once. (This needs a broker that
keeps in-flight QoS 1 messages of a persistent session, as mosquitto does; amqtt 0.12 drops them
when the subscriber's connection dies, so against amqtt a sink crash can lose the messages it had
not acknowledged.)

A storage failure (disk full, I/O error, locked database, lost database connection) is not
acknowledged either, for any message of the group it hit: the sink drops the connection and
reconnects after a backoff, so the broker redelivers them all. Messages that can never
be stored (undecodable, gateway id of the topic and payload differ, malformed fields) are counted
by reason, logged and acknowledged, so one bad message never blocks the subscription.

All message handling runs on the event loop. Messages are stored by group commit
(:mod:`bridge.cloud.sink_group`): what arrived while the previous group was being committed is
stored in one transaction (one fsync), then acknowledged in arrival order (MQTT wants PUBACKs in
PUBLISH order); at low load a group is one message, stored at once. With MQTT 5 the sink announces a
receive window of twice the group size, at least 100 (CONNECT's Receive Maximum): room for the next
group to arrive during a commit, and a bound on what the sink holds in memory. Over MQTT 3.1.1 the
broker's own limit applies (mosquitto: ``max_inflight_messages``; EMQX: ``max_inflight``).

With ``shared_group`` several sinks split the data topics of an MQTT 5 shared subscription, each
with its own database; ``build_report`` of each database then shows the sequence gaps of its share
only, so check gaps across the union (or use one database).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from bridge.cloud.file_receiver import FileOptions, FileReceiver, file_filters
from bridge.cloud.sink_group import GroupCommit, GroupLimits
from bridge.cloud.sink_handler import SinkCounters, SinkHandler
from bridge.cloud.sink_port import SinkStorePort, is_postgres_url, open_sink_store
from bridge.mqtt.backoff import DecorrelatedJitter
from bridge.mqtt.connect import connect_with_backoff
from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.errors import BridgeError, BrokerUnreachable, ConnectionLost, SubscribeFailed, UplinkStopped
from bridge.mqtt.types import ANONYMOUS, ClientSettings, Login, Message, TlsSettings
from bridge.mqtt.urls import BrokerUrl, parse_broker_url
from bridge.protocol.topics import DEFAULT_PREFIX, UPLINK_TOPICS, TopicPattern, valid_id

__all__ = ["DEFAULT_PREFIX", "FileOptions", "GroupLimits", "Sink", "SinkCounters", "default_client_id", "run_sink",
           "subscriptions"]

log = logging.getLogger(__name__)

Protocol = Literal["5", "3.1.1"]


def default_client_id(db: Path | str, worker: str | None = None) -> str:
    """A client id that is stable for one database (and ``worker``) on one host, so a restarted sink
    resumes its persistent session (and gets what the broker kept for it) while two sinks never
    collide. ``db`` is a store's ``identity`` (a SQLite file's absolute path, a PostgreSQL URL without
    password); ``worker`` tells apart the workers of a shared group writing one database."""
    name = db.resolve() if isinstance(db, Path) else db
    suffix = "" if worker is None else f":{worker}"
    digest = hashlib.sha1(f"{socket.gethostname()}:{name}{suffix}".encode()).hexdigest()
    return f"sink-{digest[:12]}"


def subscriptions(prefix: str = DEFAULT_PREFIX, shared_group: str | None = None) -> list[tuple[str, int]]:
    """The QoS 1 filters of a sink. With ``shared_group`` the data topics become MQTT 5 shared
    subscriptions; ``status`` never does, because brokers send no retained messages to shared
    subscriptions and every sink wants the status."""
    base = TopicPattern(prefix).subscription()
    share = f"$share/{shared_group}/" if shared_group else ""
    return [(f"{'' if kind == 'status' else share}{base}/{kind}", 1) for kind in UPLINK_TOPICS]


class _Session:
    """Receives the messages of one connection attempt loop.

    Messages can arrive before :func:`connect_with_backoff` has returned the connection (a resumed
    session redelivers at once after CONNACK); they wait here until :meth:`attach` says which
    connection to acknowledge them on, then go to that connection's group commit.
    """

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._files = sink.files
        self._group: GroupCommit | None = None
        self._conn: MqttConnection | None = None
        self._early: list[Message] = []

    def __call__(self, message: Message) -> None:
        if self._group is None or self._conn is None:
            self._early.append(message)
        elif self._files is not None and self._files.route(message.topic) is not None:
            self._files.add(message, self._conn)
        else:
            self._group.add(message)

    def attempt_failed(self, url: BrokerUrl, error: BaseException, delay: float) -> None:
        # Anything buffered came from a connection that was discarded: unacknowledged, so redelivered.
        self._early.clear()

    def attach(self, conn: MqttConnection) -> None:
        self._group = GroupCommit(self._sink.handler, conn, self._sink.group_limits)
        self._conn = conn
        early, self._early = self._early, []
        for message in early:
            self(message)

    def close(self) -> None:
        if self._group is not None:
            self._group.close()


def _check(prefix: str, shared_group: str | None, protocol: Protocol, urls: Sequence[str | BrokerUrl]) -> None:
    if "{gateway_id}" not in prefix:
        raise ValueError(f"prefix {prefix!r} must contain {{gateway_id}}")
    if shared_group is not None:
        if protocol != "5":
            raise ValueError("shared subscriptions need MQTT 5 (protocol='5')")
        if not valid_id(shared_group):
            raise ValueError(f"shared group {shared_group!r} is not a valid topic level")
    if not urls:
        raise ValueError("Sink needs at least one broker url")


class Sink:
    """Subscribe to all gateways under ``prefix`` and store their batches and control records."""

    def __init__(
        self,
        store: SinkStorePort,
        urls: Sequence[str | BrokerUrl],
        *,
        protocol: Protocol = "5",
        shared_group: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        client_id: str | None = None,
        persistent: bool = True,
        session_expiry_s: int = 86_400,
        tls: TlsSettings | None = None,
        login: Login = ANONYMOUS,
        backoff: DecorrelatedJitter | None = None,
        connect_timeout_s: float = 10.0,
        start_timeout_s: float | None = None,
        group_limits: GroupLimits | None = None,
        files: FileOptions | None = None,
    ) -> None:
        """``files``: also receive uploads into ``files.root`` (:mod:`bridge.cloud.file_receiver`;
        a plain subscription, even in a shared group: one file receiver per group).
        ``start_timeout_s``: give up with :class:`~bridge.mqtt.errors.BrokerUnreachable` when no broker
        accepted the first connection within that many seconds (None: keep trying). Later
        reconnects always keep trying. ``group_limits``: how much one transaction of the group
        commit takes (:class:`~bridge.cloud.sink_group.GroupLimits`); the sink asks the broker
        (MQTT 5 Receive Maximum) for as many unacknowledged messages as one group takes."""
        _check(prefix, shared_group, protocol, urls)
        self.store = store
        self.urls = list(urls)
        self.group_limits = group_limits or GroupLimits()
        self.filters = subscriptions(prefix, shared_group)
        self.settings = ClientSettings(
            client_id=client_id or default_client_id(store.identity),
            protocol=protocol,
            clean_start=not persistent,
            session_expiry_s=session_expiry_s if persistent and protocol == "5" else 0,
            manual_ack=True,
            receive_maximum=min(max(self.group_limits.max_messages * 2, 100), 65_535) if protocol == "5" else None,
            username=login.username,
            password=login.password,
            tls=login.tls or tls,
            connect_timeout_s=connect_timeout_s,
        )
        self._prefix = prefix
        self.handler = SinkHandler(store, prefix)
        self.counters = self.handler.counters
        self.files = None if files is None else FileReceiver(store, self.counters, files, prefix)
        if self.files is not None:
            self.filters += self.files.filters
            self.handler.on_file_status = self.files.status_stored
        self.gateway_state = self.handler.gateway_state
        self.last_seen_ms = self.handler.last_seen_ms
        self.ready = asyncio.Event()
        """Set while the sink is connected and subscribed."""
        self._backoff = backoff or DecorrelatedJitter(0.5, 30.0)
        self._start_timeout_s = start_timeout_s
        self._last_connect_error = "no attempt finished"
        self._subscribed_once = False

    # ------------------------------------------------------------ session loop
    async def _connect(self, session: _Session, stop: asyncio.Event) -> MqttConnection:
        def failed(url: BrokerUrl, error: BaseException, delay: float) -> None:
            self._last_connect_error = str(error)
            session.attempt_failed(url, error, delay)

        connecting = connect_with_backoff(self.urls, self.settings, self._backoff, on_message=session,
                                          on_attempt_failed=failed, stop=stop)
        if self.counters.connects or self._start_timeout_s is None:
            return await connecting
        try:
            return await asyncio.wait_for(connecting, self._start_timeout_s)
        except asyncio.TimeoutError:
            urls = ", ".join(str(parse_broker_url(u) if isinstance(u, str) else u) for u in self.urls)
            raise BrokerUnreachable(
                f"no broker reachable at {urls} within {self._start_timeout_s:g} s ({self._last_connect_error}); "
                "check --url and that the broker is running and accepts this client") from None

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe and store until ``stop`` is set, reconnecting after every drop.

        Raises :class:`~bridge.mqtt.errors.SubscribeFailed` if the broker refuses a filter on the
        first connection (e.g. no shared subscriptions): retrying would not help. Once the filters
        have been accepted, a later refusal is taken as passing (a cluster node that has just lost a
        peer may refuse a subscription for a moment): the sink reconnects after a backoff.
        """
        if self.files is None:
            await self._sessions(stop)
            return
        async with self.files.running():
            await self._sessions(stop)

    async def _sessions(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                session = _Session(self)
                try:
                    conn = await self._connect(session, stop)
                except UplinkStopped:
                    return
                self.counters.connects += 1
                session.attach(conn)
                try:
                    reason = await self._serve(conn, stop)
                finally:
                    self.ready.clear()
                    session.close()
                    await conn.close()
                if reason is not None:
                    delay = self._backoff.next_delay()
                    log.warning("sink lost %s (%s); reconnecting in %.1f s", conn.url, reason, delay)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
        finally:
            self.ready.clear()

    async def _serve(self, conn: MqttConnection, stop: asyncio.Event) -> str | None:
        """Subscribe and wait; return why the connection ended, or None when asked to stop."""
        try:
            await conn.subscribe(self.filters)
        except ConnectionLost as exc:
            return str(exc)
        except SubscribeFailed as exc:
            if not self._subscribed_once:
                raise
            self.counters.subscribe_refusals += 1
            return f"{exc}; the same filters were accepted before"
        self._subscribed_once = True
        if self.files is not None:
            self.files.connected(conn)
        elif conn.info.session_present:  # a session that had --files-dir before: stop the chunks coming
            with contextlib.suppress(BridgeError):
                await conn.unsubscribe([f for f, _ in file_filters(self._prefix)])
        self.ready.set()
        log.info("sink subscribed on %s as %s (session present: %s)", conn.url, self.settings.client_id,
                 conn.info.session_present)
        closed = asyncio.ensure_future(conn.wait_closed())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            closed.cancel()
        if stop.is_set():
            return None
        return closed.result() if closed.done() and not closed.cancelled() else "closed"

async def run_sink(
    url: str | Sequence[str],
    db: Path | str,
    *,
    protocol: Protocol = "5",
    shared_group: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    stop: asyncio.Event,
    client_id: str | None = None,
    worker: str | None = None,
    persistent: bool = True,
    start_timeout_s: float | None = None,
    login: Login = ANONYMOUS,
    db_password_file: Path | None = None,
    group_limits: GroupLimits | None = None,
    files: FileOptions | None = None,
) -> None:
    """Run a sink storing into ``db`` (a SQLite path or a PostgreSQL URL, see
    :func:`~bridge.cloud.sink_port.open_sink_store`) until ``stop`` is set (the ``edge-gateway sink`` command)."""
    urls = [url] if isinstance(url, str) else list(url)
    store = open_sink_store(db, password_file=db_password_file)
    if shared_group and not is_postgres_url(db):
        log.warning("each worker's SQLite file drops only the duplicates that reach that worker: a batch the "
                    "broker redelivers to another member of %r is stored in both files; workers of a shared "
                    "group belong on one PostgreSQL database", shared_group)
    try:
        sink = Sink(store, urls, protocol=protocol, shared_group=shared_group, prefix=prefix,
                    client_id=client_id or default_client_id(store.identity, worker), persistent=persistent,
                    start_timeout_s=start_timeout_s, login=login, group_limits=group_limits,
                    files=files)
        await sink.run(stop)
    finally:
        store.close()
    c = sink.counters
    log.info("sink stopped: %d batches (%d readings), %d alerts, %d events, %d responses, "
             "%d duplicates, %d invalid; %d messages in %d transactions (largest %d)", c.batches, c.readings,
             c.alerts, c.events, c.responses, c.duplicates, c.invalid, c.handled, c.groups, c.largest_group)
    if sink.files is not None:
        f = sink.files.counters
        log.info("file receiver stopped: %d files stored, %d failed, %d expired, %d abandoned by their gateway, "
                 "%d chunks (%d duplicates), %d receipts", f.stored, f.failed, f.expired, f.abandoned, f.chunks,
                 f.duplicate_chunks, sum(f.receipts.values()))
