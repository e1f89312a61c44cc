"""The forwarder: take records from the durable store, publish, and delete only after PUBACK.

Over one connection it keeps up to ``window`` records in flight per lane, always filling the
control lane first, so alerts and responses never wait behind a telemetry backlog. Telemetry
interleaves live batches with the backlog (``backlog_per_live`` backlog batches per live batch
while both wait), optionally under a byte-rate cap. A failed or
unacknowledged record is released back to the store and keeps its place in the order; it is sent
again on the next connection with the replay flag set. A record the broker refuses for good
(MQTT 5 reason codes such as "not authorized" or "packet too large") is removed and reported, so
it cannot block the lane forever.

What is in flight and what is backlog is the store's state (its leases and replay flags); the
forwarder asks the store and keeps no copy of it.

A third, optional lane carries bulk messages (file chunks, :mod:`bridge.uplink.bulk`): it goes after
control and telemetry, only while no control record and no live telemetry batch waits, and only
into connection slots neither of them reserves; it is not drained at a clean stop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.errors import BridgeError, ConnectionLost, PublishRejected, UplinkBusy
from bridge.protocol.codec import set_replay
from bridge.uplink.bulk import BulkLane, BulkPolicy, BulkSource
from bridge.uplink.pacing import RateMeter, TokenBucket
from bridge.uplink.store import LANES, Lane, Record, RecordStore, Source, StoreError

log = logging.getLogger(__name__)

_RETRY_PAUSE_S = 1.0
_LAG_PROBE_S = 0.01
# Acknowledged telemetry is deleted in groups: one transaction (one fsync) for the PUBACKs of up to
# this long, or this many records. A draining backlog then deletes runs of neighbouring rows, not
# one row per transaction. Control records are deleted at once (their delivery is timed).
ACK_GROUP_S = 0.025
ACK_GROUP_MAX = 128


@dataclass(frozen=True)
class LanePolicy:
    qos: int
    window: int


@dataclass(frozen=True)
class DrainPolicy:
    """How the telemetry backlog shares the link with live batches."""

    backlog_per_live: int = 4  # backlog batches sent per live batch while both are waiting
    max_bytes_per_s: float = 0.0  # byte-rate cap for the whole uplink; 0 = none
    burst_bytes: int = 65536
    max_loop_lag_s: float = 0.001  # shrink the backlog's window while the event loop lags more; 0 = off


class Forwarder:
    def __init__(
        self,
        store: RecordStore,
        policies: dict[Lane, LanePolicy],
        *,
        on_delivered: Callable[[Record, int], None],
        on_rejected: Callable[[Record, str], None],
        drain: DrainPolicy = DrainPolicy(),
        bulk: BulkSource | None = None,
        bulk_policy: BulkPolicy | None = None,
    ) -> None:
        self._store = store
        self._policies = policies
        self._on_delivered = on_delivered
        self._on_rejected = on_rejected
        self._drain_policy = drain
        self._bucket = TokenBucket(drain.max_bytes_per_s, max(drain.burst_bytes, drain.max_bytes_per_s)) \
            if drain.max_bytes_per_s > 0 else None
        self._wake = asyncio.Event()
        self.bulk = BulkLane(bulk, bulk_policy or BulkPolicy(), on_settled=self._wake.set) if bulk is not None else None
        self._paused_until: dict[Lane, float] = dict.fromkeys(LANES, 0.0)  # after a "retry later" PUBACK
        self._backlog_credit = 0
        # The backlog's share of the telemetry window. A drain on a fast link would otherwise keep
        # the one event loop busy (reads, publishes, deletes) and delay devices and control messages:
        # it halves while the loop lags more than max_loop_lag_s and grows back by one when it does not.
        self._backlog_window = policies["telemetry"].window
        self._loop_lag = 0.0
        self._acked: list[tuple[Record, int]] = []  # PUBACKed, to be deleted in the next flush
        # of those, per (lane, replay): they stay leased in the store until deleted, but no longer
        # take a place in the window
        self._awaiting_delete: dict[tuple[Lane, bool], int] = {(lane, r): 0 for lane in LANES for r in (False, True)}
        self._flush_timer: asyncio.TimerHandle | None = None
        # one per connection: a publish of an earlier connection that completes late is ignored
        # (its record was released when that connection ended)
        self._connection = 0
        self._pumping: MqttConnection | None = None  # the connection pump() is sending over
        self.backlog_rate = RateMeter()  # backlog (replay) readings acknowledged per second
        self.live_sent = 0
        self.backlog_sent = 0

    def wake(self) -> None:
        """Something new is in the store. A control record goes out now, from the caller's step:
        waking the pump would cost it a few more passes of a busy event loop."""
        self._wake.set()
        conn = self._pumping
        if conn is not None and not conn.closed and \
                self._paused_until["control"] <= asyncio.get_running_loop().time():
            self._fill_control(conn)

    def mark_backlog(self) -> None:
        """Everything waiting now is backlog and will be sent with the replay flag."""
        self._store.mark_backlog()

    def oldest_unacked_s(self) -> float:
        """How long the oldest record in flight has waited for its PUBACK (0 when none is in flight).
        PUBACKs of other records do not reset it: one lost publish is noticed while the rest flow.
        Bulk messages do not count: a large chunk on a slow link may take longer than the ack
        timeout to go out whole (a dead link is still noticed by keepalive and the other lanes)."""
        return self._store.oldest_lease_s()

    async def pump(self, conn: MqttConnection, stop: asyncio.Event, drain_timeout_s: float = 5.0) -> None:
        """Send over ``conn`` until it closes or ``stop`` is set (then wait for in-flight acks)."""
        closed = asyncio.ensure_future(conn.wait_closed())
        stopping = asyncio.ensure_future(stop.wait())
        lag_probe = asyncio.ensure_future(self._probe_loop_lag()) if self._drain_policy.max_loop_lag_s > 0 else None
        self._pumping = conn
        try:
            while not conn.closed and not stop.is_set():
                self._wake.clear()
                timeout = self._fill_all(conn)
                wake = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({wake, closed, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
            if stop.is_set() and not conn.closed:
                await self._drain(conn, drain_timeout_s)
        finally:
            self._pumping = None
            closed.cancel()
            stopping.cancel()
            if lag_probe is not None:
                lag_probe.cancel()
            self._flush_acks()
            self._release_all()

    async def _drain(self, conn: MqttConnection, timeout_s: float) -> None:
        """On a clean stop: keep sending what is on disk for up to ``timeout_s``; whatever is not
        acknowledged by then stays on disk for the next start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not conn.closed and loop.time() < deadline:
            self._wake.clear()
            hint = self._fill_all(conn, bulk=False)
            if not any(self._store.in_flight(lane) for lane in LANES) and hint is None:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), min(hint or 1e9, deadline - loop.time()))
            except asyncio.TimeoutError:
                continue

    def _free(self, conn: MqttConnection, lane: Lane) -> int:
        """How many more records of ``lane`` may go out now. Telemetry never takes the connection
        slots reserved for control, so a broker with a small Receive Maximum cannot be filled with
        telemetry while an alert waits."""
        free = min(self._policies[lane].window - self._in_flight(lane), conn.free_slots)
        if lane == "telemetry":
            free = min(free, conn.free_slots - self._reserve_unused(conn, "control"))
        return free

    def _reserve_unused(self, conn: MqttConnection, lane: Lane) -> int:
        """Connection slots kept for ``lane`` (a third of the window at most, its own window at
        most) that it does not use now."""
        window = conn.info.inflight_window
        reserve = min(self._policies[lane].window, max(1, window // 3)) if window > 1 else 0
        return max(0, reserve - self._in_flight(lane))

    def _fill_bulk(self, conn: MqttConnection) -> float | None:
        """Bulk goes last: not while a control record or a live telemetry batch waits, and never
        into the slots reserved for control and telemetry."""
        if self.bulk is None or self._store.available("control") or self._store.available("telemetry", "live"):
            return None
        free = conn.free_slots - self._reserve_unused(conn, "control") - self._reserve_unused(conn, "telemetry")
        return self.bulk.fill(conn, free, self._bucket) if free > 0 else None

    async def _probe_loop_lag(self) -> None:
        """Measure how late the event loop runs a 10 ms timer and size the backlog's window."""
        loop = asyncio.get_running_loop()
        window = self._policies["telemetry"].window
        target = self._drain_policy.max_loop_lag_s
        while True:
            start = loop.time()
            await asyncio.sleep(_LAG_PROBE_S)
            lag = loop.time() - start - _LAG_PROBE_S
            self._loop_lag = max(lag, self._loop_lag * 0.7)  # quick to rise, slow to fall
            if self._loop_lag > target:
                self._backlog_window = max(1, self._backlog_window // 2)
            elif self._loop_lag < target / 2 and self._backlog_window < window:
                self._backlog_window += 1
                self._wake.set()

    def _fill_all(self, conn: MqttConnection, bulk: bool = True) -> float | None:
        """Send what the windows allow, control first. Returns when to look again if a pause or
        the rate cap holds records back (None: wait for an ack or a new record)."""
        now = asyncio.get_running_loop().time()
        waits = [until - now for until in self._paused_until.values() if until > now]
        if self._paused_until["control"] <= now:
            self._fill_control(conn)
        if self._paused_until["telemetry"] <= now:
            hint = self._fill_telemetry(conn)
            if hint is not None:
                waits.append(hint)
        if bulk and (hint := self._fill_bulk(conn)) is not None:
            waits.append(hint)
        return min(waits) if waits else None

    def _fill_control(self, conn: MqttConnection) -> None:
        free = self._free(conn, "control")
        if free > 0:
            self._send(conn, "control", self._take("control", free, "any"))

    def _fill_telemetry(self, conn: MqttConnection) -> float | None:
        free = self._free(conn, "telemetry")
        while free > 0:
            if self._bucket is not None and (wait := self._bucket.wait_s()) > 0:
                return wait
            source = self._next_source()
            if source is None:
                return None
            records = self._take("telemetry", 1, source)
            if not records or not self._send(conn, "telemetry", records):
                return None
            free -= 1
        return None

    def _next_source(self) -> Source | None:
        """Live and backlog interleaved: after each live batch up to ``backlog_per_live`` backlog
        batches, so live data keeps its latency while the backlog drains at link speed."""
        live = self._store.available("telemetry", "live")
        if live and self._backlog_credit <= 0:
            self._backlog_credit = self._drain_policy.backlog_per_live
            return "live"
        # while the loop is busy the backlog waits for an ack (live batches still go)
        backlog_busy = self._in_flight("telemetry", "backlog") >= self._backlog_window
        if not backlog_busy and self._store.available("telemetry", "backlog"):
            self._backlog_credit -= 1
            return "backlog"
        return "live" if live else None

    def _in_flight(self, lane: Lane, source: Source = "any") -> int:
        """Records of ``lane`` published and not yet acknowledged (acknowledged ones waiting for
        their grouped delete are still leased in the store, but no longer count)."""
        live, backlog = self._awaiting_delete[lane, False], self._awaiting_delete[lane, True]
        done = live if source == "live" else backlog if source == "backlog" else live + backlog
        return self._store.in_flight(lane, source) - done

    def _take(self, lane: Lane, limit: int, source: Source) -> list[Record]:
        try:
            return self._store.take(lane, limit, source)
        except StoreError as exc:
            log.warning("cannot read the %s backlog: %s", lane, exc)
            return []

    def _send(self, conn: MqttConnection, lane: Lane, records: list[Record]) -> bool:
        """Publish ``records``; False (and everything unsent released, in order) if the
        connection would not take one."""
        qos = self._policies[lane].qos
        for i, rec in enumerate(records):
            payload = set_replay(rec.payload) if lane == "telemetry" and rec.replay else rec.payload
            try:
                fut = conn.publish(rec.topic, payload, qos)
            except BridgeError as exc:
                for unsent in records[i:]:  # everything taken but not sent goes back, in order
                    self._store.release(unsent.key)
                level = logging.DEBUG if isinstance(exc, (UplinkBusy, ConnectionLost)) else logging.WARNING
                log.log(level, "publish of %s not sent: %s", rec.key, exc)
                return False
            if self._bucket is not None:
                self._bucket.spend(len(payload) + len(rec.topic))
            if lane == "telemetry":
                if rec.replay:
                    self.backlog_sent += 1
                else:
                    self.live_sent += 1
            fut.add_done_callback(functools.partial(self._done, self._connection, rec, len(payload)))
        return True

    def _done(self, connection: int, rec: Record, size: int, fut: asyncio.Future[None]) -> None:
        if not fut.cancelled():
            fut.exception()  # retrieved here, whatever follows: a record released at a stop fails later
        if connection != self._connection:
            return  # already released (connection ended): it stays on disk for the next connection
        try:
            self._settle(rec, size, fut)
        except StoreError as exc:  # the delete failed (disk full): keep it, send again later
            log.warning("could not settle %s: %s", rec.key, exc)
            self._store.release(rec.key)
        finally:
            self._wake.set()

    def _settle(self, rec: Record, size: int, fut: asyncio.Future[None]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            if isinstance(exc, PublishRejected) and exc.permanent:
                acked = self._store.ack(rec.key).get(rec.key)
                if acked is not None:
                    self._on_rejected(acked, f"broker refused it: {exc}")
            else:
                if isinstance(exc, PublishRejected):
                    self._paused_until[rec.lane] = asyncio.get_running_loop().time() + _RETRY_PAUSE_S
                    log.warning("broker asked us to retry %s later: %s", rec.key, exc)
                self._store.release(rec.key)
        else:  # deleted together with the other acks of a short while: one transaction
            self._acked.append((rec, size))
            self._awaiting_delete[rec.lane, rec.replay] += 1
            self._schedule_flush(0.0 if rec.lane == "control" or len(self._acked) >= ACK_GROUP_MAX
                                 else ACK_GROUP_S)

    def _schedule_flush(self, delay: float) -> None:
        timer = self._flush_timer
        if timer is not None and (delay > 0 or timer.when() <= asyncio.get_running_loop().time()):
            return  # a flush is already due (at once, or no later than this one would be)
        if timer is not None:
            timer.cancel()
        self._flush_timer = asyncio.get_running_loop().call_later(delay, self._flush_acks)

    def _flush_acks(self) -> None:
        """Delete the acknowledged records from disk in one transaction (one fsync for a burst of
        PUBACKs, not one each), then count them as delivered. If the delete fails they stay on
        disk and are sent again (the sink drops the duplicates)."""
        acked, self._acked = self._acked, []
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        for rec, _ in acked:
            self._awaiting_delete[rec.lane, rec.replay] -= 1
        if not acked:
            return
        try:
            removed = self._store.ack(*(rec.key for rec, _ in acked))
        except StoreError as exc:
            log.warning("could not delete %d acknowledged records: %s", len(acked), exc)
            for rec, _ in acked:
                self._store.release(rec.key)
            self._wake.set()
            return
        for rec, size in acked:
            stored = removed.get(rec.key)
            if stored is not None:
                if rec.replay and rec.lane == "telemetry":
                    self.backlog_rate.add(rec.readings)
                self._on_delivered(stored, size)
        self._wake.set()

    def _release_all(self) -> None:
        self._connection += 1
        if self.bulk is not None:
            self.bulk.connection_ended()
        unacked = self._store.release_all()
        if unacked:
            log.info("%d record(s) sent without a PUBACK stay on disk and go again on the next connection", unacked)
