"""The fleet load generator's publisher: a :class:`~bridge.cloud.fleet_data.Plan` sent to a cloud
broker at a chosen rate, through a few MQTT connections of the project's paho adapter.

Each virtual gateway's messages go through one connection (the gateways are dealt to the
connections in turn), so a gateway's batches reach the broker in seq order, as a real gateway's do.
Every publish is QoS 1 within a bounded in-flight window per connection; the rate is a token
bucket in readings per second (re-sent batches count: they load the sink too). The run ends after
``duration_s`` seconds or ``batches`` new batches, then waits for every PUBACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from bridge.cloud.fleet_data import Plan, Send
from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.errors import BridgeError, ConnectionLost
from bridge.mqtt.types import ANONYMOUS, ClientSettings, Login
from bridge.uplink.pacing import TokenBucket

ACK_TIMEOUT_S = 60.0
BURST_S = 0.05  # the token bucket holds this many seconds of readings (at least one batch)


@dataclass(frozen=True)
class FleetSettings:
    """Where and how fast. ``rate`` is readings per second (0: as fast as the window allows)."""

    url: str
    rate: float = 0.0
    duration_s: float | None = None
    batches: int | None = None
    connections: int = 4
    window: int = 64
    protocol: Literal["5", "3.1.1"] = "5"
    login: Login = ANONYMOUS
    client_prefix: str = field(default_factory=lambda: f"fleet-{os.getpid()}")

    def __post_init__(self) -> None:
        if self.connections < 1 or self.window < 1 or self.rate < 0:
            raise ValueError("connections and window must be at least 1, rate not negative")


@dataclass(frozen=True)
class FleetResult:
    """What was sent: publishes by kind, readings (new ones, and all including re-sent), time."""

    messages: int
    batches: int
    alerts: int
    duplicates: int
    replays: int
    backlog: int
    readings: int
    readings_sent: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        """Readings per second actually sent (re-sent ones included), PUBACKs awaited."""
        return self.readings_sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _Link:
    """One connection and its publishes awaiting PUBACK."""

    def __init__(self, conn: MqttConnection) -> None:
        self.conn = conn
        self.pending: set[asyncio.Future[None]] = set()

    async def send(self, send: Send) -> None:
        while self.conn.free_slots == 0 and self.pending:
            await asyncio.wait(self.pending, return_when=asyncio.FIRST_COMPLETED)
            self._reap()
        fut = self.conn.publish(send.message.topic, send.payload, qos=1)
        self.pending.add(fut)

    def _reap(self) -> None:
        done = {f for f in self.pending if f.done()}
        self.pending -= done
        for f in done:
            f.result()  # a refused publish or a lost link ends the run: the manifest would be wrong

    async def drain(self) -> None:
        if not self.pending:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*self.pending), ACK_TIMEOUT_S)
        except asyncio.TimeoutError as exc:
            waiting = sum(1 for f in self.pending if not f.done())
            raise ConnectionLost(f"{self.conn.url}: no PUBACK for {waiting} publishes within {ACK_TIMEOUT_S:.0f} s"
                                 ) from exc
        self.pending.clear()


async def _open(settings: FleetSettings) -> list[_Link]:
    links: list[_Link] = []
    try:
        for i in range(settings.connections):
            client = ClientSettings(client_id=f"{settings.client_prefix}-{i}", protocol=settings.protocol,
                                    max_inflight=settings.window, username=settings.login.username,
                                    password=settings.login.password, tls=settings.login.tls)
            links.append(_Link(await MqttConnection.open(settings.url, client)))
    except BridgeError:
        await _close(links)
        raise
    return links


async def _close(links: list[_Link]) -> None:
    for link in links:
        with contextlib.suppress(BridgeError):
            await link.conn.close()


async def send_fleet(plan: Plan, settings: FleetSettings, stop: asyncio.Event | None = None) -> FleetResult:
    """Send ``plan`` as ``settings`` say; raises :class:`~bridge.mqtt.errors.BridgeError` when the
    broker cannot be reached or refuses or loses a publish."""
    sends = planned(plan, batches=settings.batches, duration_s=settings.duration_s, stop=stop)
    elapsed, readings_sent = await publish(sends, settings)
    c = plan.counts
    return FleetResult(messages=sum(c.values()), batches=plan.manifest.batches, alerts=c["alert"],
                       duplicates=c["duplicate"], replays=c["replay"], backlog=c["backlog"],
                       readings=plan.manifest.readings, readings_sent=readings_sent, elapsed_s=elapsed)


def planned(plan: Plan, *, batches: int | None = None, duration_s: float | None = None,
            stop: asyncio.Event | None = None) -> Iterator[Send]:
    """The plan's sends until ``batches`` new batches were made, ``duration_s`` passed since the
    first one or ``stop`` was set; then the batches it still holds back."""
    deadline = None if duration_s is None else time.monotonic() + duration_s
    for send in plan.sends(batches):
        yield send
        if (stop is not None and stop.is_set()) or (deadline is not None and time.monotonic() >= deadline):
            break
    yield from plan.rest()


async def publish(sends: Iterable[Send], settings: FleetSettings) -> tuple[float, int]:
    """Publish ``sends`` in order at ``settings.rate`` and wait for every PUBACK; return the seconds
    it took and the readings sent. A gateway's messages all go through one connection."""
    links = await _open(settings)
    try:
        return await _pump(sends, settings, links)
    finally:
        await _close(links)


async def _pump(sends: Iterable[Send], settings: FleetSettings, links: list[_Link]) -> tuple[float, int]:
    link_of: dict[str, _Link] = {}
    bucket = TokenBucket(settings.rate, settings.rate * BURST_S) if settings.rate else None
    start = time.monotonic()
    readings_sent = 0
    for send in sends:
        if bucket is not None and (wait := bucket.wait_s()) > 0:
            await asyncio.sleep(wait)
        gateway = send.message.gateway
        link = link_of.get(gateway) or link_of.setdefault(gateway, links[len(link_of) % len(links)])
        await link.send(send)
        n = len(send.message.readings)
        readings_sent += n
        if bucket is not None:
            bucket.spend(n)
    for link in links:
        await link.drain()
    return time.monotonic() - start, readings_sent
