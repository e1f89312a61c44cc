"""Runs N simulated devices against one broker and reports what happened.

By default every device has its own MQTT connection (client id = device id), as real devices do.
With ``shared_connection`` one connection publishes for all devices and receives their commands
through one wildcard subscription: use it for very large device counts.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any

from device_sim import topics
from device_sim.device import SimDevice
from device_sim.errors import SimConfigError, SimConnectError
from device_sim.publisher import Publisher
from device_sim.settings import BrokerSettings, RunSettings
from device_sim.stats import Progress, summarize

log = logging.getLogger(__name__)
SHARED_INFLIGHT = 100


class Runner:
    def __init__(self, settings: RunSettings, broker: BrokerSettings) -> None:
        if not settings.profiles:
            raise SimConfigError("at least one profile is needed")
        topics.check_template(settings.device.topic_template)
        self.settings = settings
        self.broker = broker
        self.dispatch_errors = 0
        self._stop = asyncio.Event()
        self._started_at: float | None = None
        ids = topics.device_ids(settings.id_prefix, settings.devices)
        if settings.shared_connection and broker.credentials.per_device:
            raise SimConfigError("one shared connection cannot use per-device credentials (a password file, "
                                 "{device_id} in a template, or a password without --username)",
                                 "--shared-connection")
        broker.credentials.check(ids)
        cfg = settings.device
        self.publishers: list[Publisher] = []
        if settings.shared_connection:
            shared = Publisher(broker, f"device-sim-{os.getpid()}", subscriptions=[topics.COMMANDS_ALL],
                               on_message=self._dispatch, max_inflight=SHARED_INFLIGHT)
            self.publishers.append(shared)
        self.devices: dict[str, SimDevice] = {}
        for n, device_id in enumerate(ids):
            if settings.shared_connection:
                publisher = self.publishers[0]
            else:
                publisher = Publisher(broker, device_id, subscriptions=[topics.commands_filter(device_id)],
                                      on_message=self._dispatch, max_inflight=cfg.inflight)
                self.publishers.append(publisher)
            profile = settings.profiles[n % len(settings.profiles)]
            self.devices[device_id] = SimDevice(device_id, profile, cfg, publisher, settings.seed,
                                                owns_connection=not settings.shared_connection)

    def request_stop(self) -> None:
        """Stop sampling (e.g. on Ctrl-C); the run then drains and returns its summary."""
        self._stop.set()

    def progress(self) -> Progress:
        loop = asyncio.get_running_loop()
        elapsed = loop.time() - self._started_at if self._started_at is not None else 0.0
        stats = [d.stats for d in self.devices.values()]
        return Progress(
            sent=sum(s.sent for s in stats), failed=sum(s.failed for s in stats),
            reconnects=sum(p.reconnects for p in self.publishers),
            connected=sum(1 for p in self.publishers if p.connected), connections=len(self.publishers),
            elapsed_s=elapsed,
        )

    async def run(self) -> dict[str, Any]:
        """Connect every device (raises :class:`SimConnectError`), run, drain, disconnect, summarize."""
        await self._connect_all()
        loop = asyncio.get_running_loop()
        self._started_at = start = loop.time()
        try:
            tasks = [loop.create_task(d.run(), name=f"device {d.device_id}") for d in self.devices.values()]
            stopper = loop.create_task(self._stop.wait())
            all_done = asyncio.gather(*tasks, return_exceptions=True)
            waiters: list[asyncio.Future[Any]] = [all_done, stopper]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in [*tasks, stopper]:
                task.cancel()
            await asyncio.gather(all_done, stopper, return_exceptions=True)
            await asyncio.gather(*(d.drain(self.settings.drain_timeout_s) for d in self.devices.values()))
            elapsed = loop.time() - start
        finally:
            await self._close_all()
        await asyncio.sleep(0)  # let the callbacks of publishes failed by close() run
        return self.summary(elapsed)

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        cfg = self.settings.device
        per_sample = 1.0
        if cfg.fmt == "bare" or cfg.one_metric_per_message:
            per_sample = sum(len(p.metrics) for p in self.settings.profiles) / len(self.settings.profiles)
        requested = self.settings.devices * cfg.rate_hz * per_sample
        extra = {
            "profiles": [p.name for p in self.settings.profiles],
            "format": cfg.fmt,
            "qos": cfg.qos,
            "shared_connection": self.settings.shared_connection,
            "rate_hz_per_device": cfg.rate_hz,
        }
        reconnects = sum(p.reconnects for p in self.publishers)
        per_device = [(device_id, d.stats) for device_id, d in self.devices.items()]
        result = summarize(per_device, elapsed_s=elapsed_s, reconnects=reconnects,
                           requested_msg_per_s=requested, extra=extra)
        result["errors"] += self.dispatch_errors
        return result

    async def _connect_all(self) -> None:
        await connect_all(self.publishers, self.broker, self.settings.connect_concurrency)

    async def _close_all(self) -> None:
        await close_all(self.publishers, self.settings.connect_concurrency)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        """Route an incoming command to its device (runs in the event loop)."""
        parsed = topics.parse_command_topic(topic)
        if parsed is None:
            return
        device = self.devices.get(parsed[0])
        if device is None:
            return
        try:
            device.handle_command(parsed[1], payload)
        except Exception:  # the one catch-all of the command path: log, count, keep serving
            self.dispatch_errors += 1
            log.exception("command %s failed", topic)


async def connect_all(publishers: Sequence[Publisher], broker: BrokerSettings, concurrency: int = 32) -> None:
    """Connect every publisher, ``concurrency`` at a time; on the first failure close them all and
    raise it (:class:`SimConnectError` or :class:`SimConfigError`)."""
    limit = asyncio.Semaphore(concurrency)

    async def connect(publisher: Publisher) -> None:
        async with limit:
            await publisher.connect()

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(connect(p)) for p in publishers]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in pending:  # one failure is enough: do not wait for 1,000 timeouts
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    errors = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
    if errors:
        await close_all(publishers, concurrency)
        first = errors[0]
        if isinstance(first, SimConnectError | SimConfigError):
            raise first
        raise SimConnectError(f"cannot connect to {broker.address}: {first}") from first


async def close_all(publishers: Sequence[Publisher], concurrency: int = 32) -> None:
    limit = asyncio.Semaphore(concurrency)

    async def close(publisher: Publisher) -> None:
        async with limit:
            await publisher.close()

    await asyncio.gather(*(close(p) for p in publishers))
