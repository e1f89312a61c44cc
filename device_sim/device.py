"""One simulated device: sampling schedule, seq numbers, a bounded backlog, events and commands.

Telemetry goes through a per-device backlog: a sample is encoded (and gets its ``seq``) only when
the backlog has room, otherwise it is counted as failed (overflow), so the seq numbers of what is
delivered stay contiguous. The backlog is handed to the publisher while connected, at most
``inflight`` messages waiting for an ack at a time; after a reconnect it drains in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from device_sim import payloads, topics
from device_sim.commands import Command, number_arg, parse_command, response
from device_sim.errors import CommandError
from device_sim.profiles import Profile
from device_sim.publisher import Publisher
from device_sim.sampler import DeviceSampler, device_rng
from device_sim.settings import DeviceSettings
from device_sim.stats import DeviceStats

log = logging.getLogger(__name__)
CONTROL_QOS = 1


@dataclass(frozen=True)
class OutMessage:
    topic: str
    payload: bytes


def now_ms() -> int:
    return int(time.time() * 1000)


class SimDevice:
    def __init__(self, device_id: str, profile: Profile, settings: DeviceSettings, publisher: Publisher,
                 seed: int | None, *, owns_connection: bool = True) -> None:
        self.device_id = device_id
        self.profile = profile
        self.settings = settings
        self.publisher = publisher
        self.owns_connection = owns_connection
        self.sampler = DeviceSampler(profile, device_id, seed)
        self.rate_hz = settings.rate_hz
        self.stats = DeviceStats()
        self._sched_rng = device_rng(seed, device_id, "schedule")
        self._backlog: deque[OutMessage] = deque()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._paused = False
        self._wake: asyncio.Future[bool] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: dict[str, Callable[[Command], Any]] = {
            "set_rate": self._cmd_set_rate, "set_setpoint": self._cmd_set_setpoint,
            "reboot": self._cmd_reboot, "ping": self._cmd_ping,
        }
        publisher.add_connect_listener(self.flush)

    # ---- sampling ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Sample at ``rate_hz`` until ``count`` samples or ``duration_s`` (forever if neither)."""
        loop = asyncio.get_running_loop()
        cfg = self.settings
        start = last = loop.time()
        end = start + cfg.duration_s if cfg.duration_s is not None else None
        next_t = start + self._sched_rng.uniform(0.0, 1.0 / self.rate_hz)
        while cfg.count is None or self.stats.samples < cfg.count:
            period = 1.0 / self.rate_hz
            target = next_t + cfg.jitter * period * self._sched_rng.random()
            if end is not None and target > end:
                break
            if await self._sleep(target - loop.time()):  # woken early: the rate changed
                next_t = max(last + 1.0 / self.rate_hz, loop.time())
                continue
            last = loop.time()
            if not self._paused:
                try:
                    self._take_sample(period)
                except Exception:  # the one catch-all of this loop: log, count, keep sampling
                    self.stats.errors += 1
                    log.exception("%s: sampling failed", self.device_id)
            next_t = max(next_t + period, loop.time())

    async def _sleep(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True when :meth:`_wake_up` cut the sleep short."""
        if delay <= 0:
            return False
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._wake = fut
        handle = loop.call_later(delay, _set_result, fut, False)
        try:
            return await fut
        finally:
            handle.cancel()
            self._wake = None

    def _wake_up(self) -> None:
        if self._wake is not None:
            _set_result(self._wake, True)

    def _take_sample(self, period: float) -> None:
        sample = self.sampler.sample(period)
        self.stats.samples += 1
        for event in sample.events:
            self.raise_event(event.name, event.detail)
        if sample.silent or not sample.values:
            return
        values = sample.values
        cfg = self.settings
        per_metric = cfg.fmt == "bare" or cfg.one_metric_per_message
        needed = len(values) if per_metric else 1
        if len(self._backlog) + needed > cfg.backlog:
            self.stats.failed += needed
            self.stats.overflow += needed
            return
        ts = now_ms()
        if cfg.fmt == "bare":
            for metric, value in values.items():
                self._backlog.append(OutMessage(
                    topics.telemetry_topic(cfg.topic_template, self.device_id, metric), payloads.bare(value)))
        elif per_metric:
            with_metric = topics.has_metric(cfg.topic_template)
            for metric, value in values.items():
                topic = topics.telemetry_topic(cfg.topic_template, self.device_id, metric if with_metric else None)
                self._backlog.append(OutMessage(topic, payloads.telemetry(ts, self._next_seq(), {metric: value},
                                                                          cfg.fmt)))
        else:
            self._backlog.append(OutMessage(topics.telemetry_topic(cfg.topic_template, self.device_id),
                                            payloads.telemetry(ts, self._next_seq(), values, cfg.fmt)))
        self.flush()

    def _next_seq(self) -> int:
        self.stats.last_seq += 1
        return self.stats.last_seq

    # ---- sending ---------------------------------------------------------------------------------
    def flush(self) -> None:
        """Hand queued telemetry to the publisher while connected and the inflight window allows."""
        while self._backlog and self._inflight < self.settings.inflight and self.publisher.connected:
            msg = self._backlog[0]
            fut = self.publisher.publish(msg.topic, msg.payload, self.settings.qos)
            if fut is None:  # QoS 0 and the connection just went away: keep it for after the reconnect
                break
            self._backlog.popleft()
            self._track(fut, self._telemetry_done)
        self._update_idle()

    def _track(self, fut: asyncio.Future[bool], done: Callable[[bool], None]) -> None:
        self._inflight += 1
        self._idle.clear()

        def finished(f: asyncio.Future[bool]) -> None:
            self._inflight -= 1
            done(f.result())
            self.flush()

        fut.add_done_callback(finished)

    def _telemetry_done(self, ok: bool) -> None:
        if ok:
            self.stats.sent += 1
        else:
            self.stats.failed += 1

    def _update_idle(self) -> None:
        if not self._backlog and self._inflight == 0:
            self._idle.set()
        else:
            self._idle.clear()

    async def drain(self, timeout_s: float) -> None:
        """Wait until everything queued was acknowledged; what is left after the timeout is failed."""
        self.flush()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            log.warning("%s: %d queued and %d unacknowledged messages at the end of the run",
                        self.device_id, len(self._backlog), self._inflight)
        self.stats.failed += len(self._backlog)
        self._backlog.clear()
        for task in list(self._tasks):
            task.cancel()

    # ---- control: events and commands ------------------------------------------------------------
    def raise_event(self, event: str, detail: Any = None) -> None:
        body = {"ts": now_ms(), "event": event, "detail": detail}
        self._send_control(topics.events_topic(self.device_id), body, "events_sent")

    def _send_control(self, topic: str, body: dict[str, Any], counter: str) -> None:
        fut = self.publisher.publish(topic, payloads.encode_json(body), CONTROL_QOS)
        if fut is None:  # cannot happen with QoS 1, kept for type safety
            self.stats.control_failed += 1
            return

        def done(ok: bool) -> None:
            if ok:
                setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            else:
                self.stats.control_failed += 1

        self._track(fut, done)

    def handle_command(self, name: str, payload: bytes) -> None:
        """Act on ``devices/{id}/commands/{name}`` and publish the response."""
        self.stats.commands_received += 1
        try:
            command = parse_command(name, payload)
        except CommandError as err:
            self.stats.commands_malformed += 1
            if err.command_id is not None:
                self._respond(response(err.command_id, "error", {"reason": err.reason}))
            return
        if command.expired(time.time()):
            self.stats.commands_expired += 1
            self._respond(response(command.id, "expired"))
            return
        handler = self._handlers.get(command.name)
        if handler is None:
            self.stats.commands_unknown += 1
            known = ", ".join(sorted(self._handlers))
            self._respond(response(command.id, "unknown_command",
                                   {"reason": f"unknown command {command.name!r} (known: {known})"}))
            return
        try:
            result = handler(command)
        except CommandError as err:
            self.stats.commands_malformed += 1
            self._respond(response(command.id, "error", {"reason": err.reason}))
            return
        self._respond(response(command.id, "ok", result))

    def _respond(self, body: dict[str, Any]) -> None:
        self._send_control(topics.responses_topic(self.device_id), body, "commands_answered")

    def _cmd_set_rate(self, command: Command) -> dict[str, Any]:
        rate = number_arg(command.args, "rate_hz", command.id)
        if not 0 < rate <= self.settings.max_rate_hz:
            raise CommandError(f"args.rate_hz must be > 0 and <= {self.settings.max_rate_hz:g}", command.id)
        self.rate_hz = rate
        self._wake_up()
        return {"rate_hz": rate}

    def _cmd_set_setpoint(self, command: Command) -> dict[str, Any]:
        metric = command.args.get("metric")
        if not isinstance(metric, str) or metric not in self.profile.metrics:
            known = ", ".join(self.profile.metrics)
            raise CommandError(f"args.metric must be one of: {known}", command.id)
        value = number_arg(command.args, "value", command.id)
        spec = self.profile.metrics[metric]
        if not spec.min <= value <= spec.max:
            raise CommandError(f"value {value:g} is outside the valid range [{spec.min:g}, {spec.max:g}]",
                               command.id)
        return {"metric": metric, "value": self.sampler.set_setpoint(metric, value)}

    def _cmd_ping(self, command: Command) -> dict[str, Any]:
        return {"ts": now_ms()}

    def _cmd_reboot(self, command: Command) -> dict[str, Any]:
        pause_s = self.settings.reboot_pause_s
        if "pause_s" in command.args:
            pause_s = number_arg(command.args, "pause_s", command.id)
            if not 0 <= pause_s <= 3600:
                raise CommandError("args.pause_s must be between 0 and 3600", command.id)
        if self._paused:
            raise CommandError("already rebooting", command.id)
        self._paused = True
        task = asyncio.get_running_loop().create_task(self._reboot(pause_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {"pause_s": pause_s}

    async def _reboot(self, pause_s: float) -> None:
        """Announce, go offline for ``pause_s`` (no samples), come back."""
        self.stats.reboots += 1
        self.raise_event("rebooted", {"pause_s": pause_s, "reason": "command"})
        try:
            if self.owns_connection:
                try:  # let the response and the event reach the broker before going away
                    await asyncio.wait_for(self._idle.wait(), 5.0)
                except asyncio.TimeoutError:
                    log.warning("%s: rebooting with unacknowledged messages", self.device_id)
                await self.publisher.disconnect()
            await asyncio.sleep(pause_s)
        finally:
            if self.owns_connection:
                self.publisher.reconnect()
            self._paused = False


def _set_result(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)
