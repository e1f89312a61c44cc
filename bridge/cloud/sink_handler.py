"""What the sink does with one message: route it by topic, decode it, validate it through the
protocol's record classes, store it once, and count what happened.

Messages that can never be stored (undecodable, gateway id of the topic and payload differ, malformed
fields) are counted by reason in the store and in :class:`SinkCounters`; a storage failure raises
:class:`~bridge.cloud.errors.SinkStoreError` so that the sink leaves the message unacknowledged.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from bridge.cloud.sink_port import SinkStorePort
from bridge.mqtt.types import Message
from bridge.protocol.codec import decode_batch
from bridge.protocol.errors import CodecError, InvalidRecord
from bridge.protocol.records import decode_control, parse_control
from bridge.protocol.topics import KIND_OF_TOPIC, UPLINK_TOPICS, ControlKind, TopicPattern, valid_id

log = logging.getLogger("bridge.cloud.sink")

_MAX_STATUS_CHARS = 32
_MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass
class SinkCounters:
    """What the sink did since it started. ``handled`` counts messages fully processed and
    acknowledged (stored, duplicate, invalid or status): tests poll it."""

    batches: int = 0
    readings: int = 0
    duplicates: int = 0
    alerts: int = 0
    events: int = 0
    responses: int = 0
    config_acks: int = 0
    status: int = 0
    handled: int = 0
    store_errors: int = 0
    connects: int = 0
    invalid_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def invalid(self) -> int:
        return sum(self.invalid_reasons.values())


def _now_ms() -> int:
    return int(time.time() * 1000)


def _reason(exc: CodecError) -> str:
    """Short, low-cardinality counter key from a codec error message."""
    return str(exc).split(":", 1)[0][:60]


class SinkHandler:
    """Handles the messages of every gateway under ``prefix`` (a pattern with ``{gateway_id}``)."""

    def __init__(self, store: SinkStorePort, prefix: str) -> None:
        self.store = store
        self.counters = SinkCounters()
        self.gateway_state: dict[str, str] = {}
        self.last_seen_ms: dict[str, int] = {}
        self._routes = [(TopicPattern(f"{prefix}/{topic}"), topic) for topic in UPLINK_TOPICS]

    def _route(self, topic: str) -> tuple[str, str] | None:
        for pattern, kind in self._routes:
            fields = pattern.match(topic)
            if fields is not None:
                return fields["gateway_id"], kind
        return None

    def handle(self, message: Message) -> None:
        now = _now_ms()
        route = self._route(message.topic)
        if route is None:
            log.warning("ignoring message on unexpected topic %r", message.topic)
            return
        gateway, topic = route
        if not valid_id(gateway):
            self._invalid(gateway[:64], "bad gateway id", message.topic, repr(gateway))
            return
        self.last_seen_ms[gateway] = now
        if topic == "status":
            self._status(gateway, message, now)
        elif topic == "telemetry":
            self._telemetry(gateway, message, now)
        else:
            self._control(gateway, KIND_OF_TOPIC[topic], message, now)

    def _invalid(self, gateway: str, reason: str, topic: str, detail: str) -> None:
        self.store.record_invalid(gateway, reason)
        self.counters.invalid_reasons[reason] += 1
        log.warning("invalid message on %r: %s (%s)", topic, reason, detail)

    def _telemetry(self, gateway: str, message: Message, now: int) -> None:
        try:
            batch = decode_batch(message.payload, max_body_bytes=_MAX_BODY_BYTES)
        except CodecError as exc:
            self._invalid(gateway, _reason(exc), message.topic, str(exc))
            return
        if batch.gateway != gateway:
            self._invalid(gateway, "gateway mismatch", message.topic, f"payload says {batch.gateway!r}")
            return
        try:
            new = self.store.store_batch(batch, now)
        except InvalidRecord as exc:
            self._invalid(gateway, exc.reason, message.topic, str(exc))
            return
        if new:
            self.counters.batches += 1
            self.counters.readings += len(batch.readings)
        else:
            self.counters.duplicates += 1
            log.debug("duplicate batch %s/%d dropped", gateway, batch.seq)

    def _control(self, gateway: str, kind: ControlKind, message: Message, now: int) -> None:
        try:
            raw = decode_control(message.payload)
            if raw.get("gw") != gateway:
                self._invalid(gateway, "gateway mismatch", message.topic, f"payload says {raw.get('gw')!r}")
                return
            if raw.get("kind") != kind:
                self._invalid(gateway, "kind mismatch", message.topic, f"payload kind {raw.get('kind')!r}")
                return
            new = self.store.store_control(parse_control(raw), now)
        except CodecError as exc:
            self._invalid(gateway, _reason(exc), message.topic, str(exc))
            return
        except InvalidRecord as exc:
            self._invalid(gateway, exc.reason, message.topic, str(exc))
            return
        c = self.counters
        if not new:
            c.duplicates += 1
        elif kind == "alert":
            c.alerts += 1
        elif kind == "event":
            c.events += 1
        elif kind == "response":
            c.responses += 1
        else:
            c.config_acks += 1

    def _status(self, gateway: str, message: Message, now: int) -> None:
        if not message.payload:  # a retained status being cleared
            return
        try:
            state = message.payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            state = ""
        if not state or len(state) > _MAX_STATUS_CHARS or not state.isprintable():
            self._invalid(gateway, "bad status", message.topic, repr(message.payload[:40]))
            return
        self.store.record_status(gateway, state, now)
        self.gateway_state[gateway] = state
        self.counters.status += 1
