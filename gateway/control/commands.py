"""Commands from the cloud to local devices: policy, holding, delivery and answers.

:class:`CommandRouter` takes what :mod:`bridge.protocol.commands` parsed and gives every command exactly one
answer on the control lane, or forwards it to the device (whose own response then goes up):

- rejected by the parser, or a name not in ``downlink.allowed_commands`` -> ``rejected``;
- ``expires`` already past (on arrival, or while held) -> ``expired``;
- the device is not listening (no connected local client subscribed to the command topic with the
  device id spelled out: a wildcard such as ``devices/#`` is somebody else) -> held up to ``hold_offline_s``, delivered
  as soon as the device subscribes, else ``undeliverable`` (also at once when the hold queue is full
  or ``hold_offline_s`` is 0);
- forwarded -> remembered by ``(device, id)`` for ``track_responses_s`` so the device's response
  carries the command name and the round-trip time.

A command whose ``(device, id)`` is still held, or was already settled (answered by the gateway or
forwarded), is a duplicate: it is counted and neither delivered nor answered again. Settled
commands are remembered on disk (:mod:`gateway.control.answered`), so this holds across restarts: a QoS 1
redelivery or a retained command handed out again on the next subscribe gets no second answer.

A retained command is never executed. Arriving with the retain flag, it is answered ``rejected``
(reason ``retained``) once; without a readable id it cannot be answered and is counted in
``ignored`` (``retained_without_id``). Everything runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.mqtt.errors import BridgeError
from bridge.protocol.commands import NOT_ALLOWED, RETAINED, Command, CommandId, CommandRejected
from bridge.protocol.records import ControlOut, Response
from bridge.protocol.topics import TopicPattern
from gateway.config import DownlinkSection
from gateway.control.answered import AnsweredCommands
from gateway.errors import GatewayError
from gateway.observe.latency import LatencyHistogram

log = logging.getLogger(__name__)

Deliver = Callable[[str, bytes], Awaitable[None]]
DEVICE_STATUSES = frozenset({"ok", "error", "unknown_command", "expired"})
GATEWAY_STATUSES = ("rejected", "expired", "undeliverable")  # answers the gateway gives itself
RETAINED_WITHOUT_ID = "retained_without_id"  # ignored: a retained command with no id to answer
MAX_TRACKED = 10_000
_IDLE_WAIT_S = 1.0
DELIVER_TIMEOUT_S = 5.0  # an external local broker that does not acknowledge the command


def response_record(device: str, command: str | None, cid: Any, status: str, result: Any, *,
                    source: str, rtt_ms: float | None) -> Response:
    """The control record sent on ``{prefix}/responses`` (the lane stamps it with ``gw``/``stream``/``seq``)."""
    return Response(device=device, command=command, id=cid, status=status, result=result, source=source,
                    rtt_ms=rtt_ms)


def device_response(device: str, body: dict[str, Any], command: str | None = None,
                    rtt_ms: float | None = None) -> Response:
    """A device's response body ``{"id", "status", "result"}`` as a response record."""
    status = body.get("status")
    result = body.get("result")
    if not isinstance(status, str) or status not in DEVICE_STATUSES:
        result = {"reason": f"device sent an invalid status {str(status)[:32]!r}", "device_result": result}
        status = "error"
    return response_record(device, command, body.get("id"), status, result, source="device", rtt_ms=rtt_ms)


@dataclass
class CommandCounters:
    received: int = 0
    forwarded: int = 0
    duplicates: int = 0
    answered: Counter[str] = field(default_factory=Counter)  # gateway answers by status
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    responses_matched: int = 0
    responses_unmatched: int = 0
    responses_forged: int = 0  # an answer to a command that was sent to another device: refused
    forgotten: int = 0  # forwarded, but no response within track_responses_s
    ignored: Counter[str] = field(default_factory=Counter)  # not answered at all, by reason

    def snapshot(self, held: int) -> dict[str, Any]:
        return {"received": self.received, "forwarded": self.forwarded, "held": held,
                "duplicates": self.duplicates, "answered": dict(self.answered), "rejected": dict(self.rejected),
                "responses_matched": self.responses_matched, "responses_unmatched": self.responses_unmatched,
                "responses_forged": self.responses_forged, "forgotten": self.forgotten,
                "ignored": dict(self.ignored)}


@dataclass
class _Held:
    cmd: Command
    topic: str
    arrived: float  # monotonic
    give_up: float  # monotonic


@dataclass
class _Tracked:
    name: str
    arrived: float  # monotonic
    forget_at: float  # monotonic


class CommandRouter:
    def __init__(
        self,
        cfg: DownlinkSection,
        local_pattern: str,
        *,
        deliver: Deliver,
        answer: ControlOut,
        has_subscriber: Callable[[str, int | None], bool] | None,
        answered: AnsweredCommands | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_forged: Callable[[str, str], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._allowed = None if "*" in cfg.allowed_commands else frozenset(cfg.allowed_commands)
        self._pattern = TopicPattern(local_pattern)
        levels = local_pattern.split("/")
        self._device_level = levels.index("{device_id}") if "{device_id}" in levels else None
        self._deliver = deliver
        self._answer = answer
        self._has_subscriber = has_subscriber
        self._settled = answered if answered is not None else AnsweredCommands(None)
        self._wall = wall
        self._mono = monotonic
        self._held: OrderedDict[tuple[str, CommandId], _Held] = OrderedDict()
        self._outbox: list[_Held] = []
        self._tracked: OrderedDict[tuple[str, CommandId], _Tracked] = OrderedDict()
        self._wake = asyncio.Event()
        self._stopped = False
        self.counters = CommandCounters()
        self.round_trip = LatencyHistogram()  # forwarded command -> the device's response, seconds
        self._on_forged = on_forged  # (device, detail): a device answered another device's command

    # ------------------------------------------------------------------ arrival (sync, on the loop)

    def handle(self, item: Command | CommandRejected) -> None:
        c = self.counters
        c.received += 1
        if isinstance(item, CommandRejected):
            if item.id is None and item.reason == RETAINED:
                c.ignored[RETAINED_WITHOUT_ID] += 1
                log.warning("retained message on the command topic %s/%s ignored (no readable id to answer)",
                            item.device, item.name)
            elif item.id is None or not self._duplicate(item.device, item.name, item.id):
                self._reject(item.device, item.name, item.id, item.reason, item.detail)
            return
        cmd = item
        if self._duplicate(cmd.device, cmd.name, cmd.id):
            return
        if self._allowed is not None and cmd.name not in self._allowed:
            self._reject(cmd.device, cmd.name, cmd.id, NOT_ALLOWED,
                         f"command {cmd.name!r} is not in downlink.allowed_commands")
            return
        key = (cmd.device, cmd.id)
        if cmd.expired(self._wall()):
            self._gateway_answer(cmd, "expired", "the command expired before it could be delivered")
            return
        if self._stopped:  # the uplink outlives the router by a few seconds during a stop
            self._gateway_answer(cmd, "undeliverable", "the gateway is stopping")
            return
        now = self._mono()
        held = _Held(cmd, self._pattern.format(device_id=cmd.device, name=cmd.name), now,
                     now + self._cfg.hold_offline_s)
        if self._present(held.topic):
            self._outbox.append(held)
        elif self._cfg.hold_offline_s <= 0:
            self._gateway_answer(cmd, "undeliverable", "device is not connected")
            return
        elif len(self._held) >= self._cfg.max_held:
            self._gateway_answer(cmd, "undeliverable", "hold queue full")
            return
        else:
            self._held[key] = held
        self._wake.set()

    def _duplicate(self, device: str, name: str, cid: CommandId) -> bool:
        """Already held, on its way, or settled (also before a restart): count it and say so."""
        key = (device, cid)
        if key in self._held or key in self._settled or any(
                h.cmd.device == device and h.cmd.id == cid for h in self._outbox):
            self.counters.duplicates += 1
            log.info("duplicate command %s/%s id=%r ignored (already answered or on its way)", device, name, cid)
            return True
        return False

    def presence_changed(self) -> None:
        """A local client connected or subscribed: held commands may be deliverable now."""
        if self._held:
            self._wake.set()

    def _present(self, topic: str) -> bool:
        return self._has_subscriber is None or self._has_subscriber(topic, self._device_level)

    # ------------------------------------------------------------------ answers

    def _reject(self, device: str, name: str, cid: CommandId | None, reason: str, detail: str) -> None:
        if cid is not None:
            self._settled.add((device, cid))
        self.counters.rejected[reason] += 1
        self.counters.answered["rejected"] += 1
        log.info("command %r/%r id=%r rejected: %s (%s)", device, name, cid, reason, detail)
        self._answer(response_record(device, name, cid, "rejected", {"reason": reason, "detail": detail},
                                     source="gateway", rtt_ms=None))

    def _gateway_answer(self, cmd: Command, status: str, detail: str) -> None:
        self._settled.add((cmd.device, cmd.id))
        self.counters.answered[status] += 1
        log.info("command %s/%s id=%r: %s (%s)", cmd.device, cmd.name, cmd.id, status, detail)
        self._answer(response_record(cmd.device, cmd.name, cmd.id, status, {"reason": detail},
                                     source="gateway", rtt_ms=None))

    def device_response(self, device: str, body: dict[str, Any]) -> Response | None:
        """Build the record for a device's response; the command name and RTT when it answers a
        command we forwarded. None (refused, counted) when it answers a command that is awaiting
        another device's answer: only the device a command was sent to may answer it."""
        cid = body.get("id")
        tracked = self._tracked.pop((device, cid), None) if isinstance(cid, (str, int)) else None
        if tracked is None and any(key[1] == cid for key in self._tracked):
            self.counters.responses_forged += 1
            if self._on_forged is not None:
                self._on_forged(device, f"answer to command id {str(cid)[:64]!r}, which was sent to another device")
            return None
        if tracked is None:
            self.counters.responses_unmatched += 1
            return device_response(device, body)
        self.counters.responses_matched += 1
        rtt_s = self._mono() - tracked.arrived
        self.round_trip.observe(rtt_s)
        rtt_ms = round(rtt_s * 1000.0, 3)
        return device_response(device, body, tracked.name, rtt_ms)

    # ------------------------------------------------------------------ the loop

    @property
    def held(self) -> int:
        return len(self._held)

    def snapshot(self) -> dict[str, Any]:
        return {**self.counters.snapshot(len(self._held)), "round_trip": self.round_trip.snapshot()}

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver, release held commands when their device appears, give up on the others."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._wake.clear()
                self.tick()
                await self.flush()
                if self._outbox or self._wake.is_set():
                    continue
                waking = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({waking, stopping}, timeout=self._next_wait(),
                                   return_when=asyncio.FIRST_COMPLETED)
                waking.cancel()
        finally:
            stopping.cancel()
            self._stopped = True
            for held in [*self._outbox, *self._held.values()]:
                self._gateway_answer(held.cmd, "undeliverable", "the gateway is stopping")
            self._outbox.clear()
            self._held.clear()

    def _next_wait(self) -> float:
        if not self._held:
            return _IDLE_WAIT_S
        first = min(h.give_up for h in self._held.values())
        wall_now, now = self._wall(), self._mono()
        expiries = [h.cmd.expires - wall_now for h in self._held.values() if h.cmd.expires is not None]
        return max(0.0, min([first - now, _IDLE_WAIT_S, *expiries]))

    def tick(self) -> None:
        """Release held commands whose device is now subscribed; answer expired and given-up ones."""
        now, wall_now = self._mono(), self._wall()
        for key, held in list(self._held.items()):
            if held.cmd.expired(wall_now):
                del self._held[key]
                self._gateway_answer(held.cmd, "expired", "the command expired while the device was offline")
            elif self._present(held.topic):
                del self._held[key]
                self._outbox.append(held)
            elif now >= held.give_up:
                del self._held[key]
                self._gateway_answer(held.cmd, "undeliverable",
                                     f"device did not connect within {self._cfg.hold_offline_s:g} s")
        while self._tracked:
            key, tracked = next(iter(self._tracked.items()))
            if tracked.forget_at > now and len(self._tracked) <= MAX_TRACKED:
                break
            del self._tracked[key]
            self.counters.forgotten += 1

    async def flush(self) -> None:
        """Deliver what is ready, in arrival order."""
        while self._outbox:
            held = self._outbox.pop(0)
            cmd = held.cmd
            if cmd.expired(self._wall()):
                self._gateway_answer(cmd, "expired", "the command expired before it could be delivered")
                continue
            key = (cmd.device, cmd.id)
            self._tracked[key] = _Tracked(cmd.name, held.arrived, self._mono() + self._cfg.track_responses_s)
            self._settled.add(key)  # before it leaves: the device answers it, we never do again
            try:
                await asyncio.wait_for(self._deliver(held.topic, cmd.local_payload()), DELIVER_TIMEOUT_S)
            except (BridgeError, GatewayError, asyncio.TimeoutError) as exc:
                self._tracked.pop(key, None)
                self._gateway_answer(cmd, "undeliverable", f"local broker: {exc or 'no acknowledgement'}")
                continue
            self.counters.forwarded += 1
