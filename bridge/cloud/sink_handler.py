"""What the sink does with its messages: route each by topic, decode it, validate it through the
protocol's record classes (all before any transaction), then store a group of them once, in one
transaction, and count what happened.

Messages that can never be stored (undecodable, gateway id of the topic and payload differ, malformed
fields, or a value the database refuses) are counted by reason in the store and in
:class:`SinkCounters`; a storage failure raises :class:`~bridge.cloud.errors.SinkStoreError` so that
the sink leaves the whole group unacknowledged.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bridge.cloud.sink_port import SinkStorePort
from bridge.cloud.sink_rows import check_batch
from bridge.cloud.sink_writes import BatchWrite, ControlWrite, InvalidWrite, Outcome, StatusWrite, Write
from bridge.mqtt.types import Message
from bridge.protocol.codec import decode_batch
from bridge.protocol.errors import CodecError, InvalidRecord
from bridge.protocol.records import FileStatus, decode_control, parse_control
from bridge.protocol.topics import KIND_OF_TOPIC, UPLINK_TOPICS, ControlKind, TopicPattern, valid_id

log = logging.getLogger("bridge.cloud.sink")

_MAX_STATUS_CHARS = 32
_MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass
class SinkCounters:
    """What the sink did since it started. ``handled`` counts messages fully processed and
    acknowledged (stored, duplicate, invalid or status): tests poll it. ``groups`` counts the
    transactions of the group commit, ``largest_group`` the most messages one of them took."""

    batches: int = 0
    readings: int = 0
    duplicates: int = 0
    alerts: int = 0
    events: int = 0
    responses: int = 0
    config_acks: int = 0
    file_statuses: int = 0
    status: int = 0
    handled: int = 0
    groups: int = 0
    largest_group: int = 0
    store_errors: int = 0
    connects: int = 0
    subscribe_refusals: int = 0  # SUBACK refusals after the filters had been accepted once (retried)
    invalid_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def invalid(self) -> int:
        return sum(self.invalid_reasons.values())


def _now_ms() -> int:
    return int(time.time() * 1000)


def _reason(exc: CodecError) -> str:
    """Short, low-cardinality counter key from a codec error message."""
    return str(exc).split(":", 1)[0][:60]


@dataclass
class Prepared:
    """One message made ready for a group: what to store (``write``, None when nothing is) and what
    to count once the group is committed."""

    message: Message
    write: Write | None
    kind: str = ""
    """``telemetry``, a control kind, ``status``, or ``invalid``."""
    detail: str = ""


class SinkHandler:
    """Handles the messages of every gateway under ``prefix`` (a pattern with ``{gateway_id}``):
    :meth:`prepare` routes, decodes and validates one message, :meth:`commit` stores a group of
    prepared messages in one transaction and counts what happened (only after the commit, so a group
    that failed and comes again is not counted twice)."""

    def __init__(self, store: SinkStorePort, prefix: str) -> None:
        self.store = store
        self.counters = SinkCounters()
        self.gateway_state: dict[str, str] = {}
        self.last_seen_ms: dict[str, int] = {}
        self._routes = [(TopicPattern(f"{prefix}/{topic}"), topic) for topic in UPLINK_TOPICS]
        self.on_file_status: Callable[[str, FileStatus], None] | None = None
        """Told of each FileStatus record once its group is committed (also a duplicate): the file receiver."""

    def _route(self, topic: str) -> tuple[str, str] | None:
        for pattern, kind in self._routes:
            fields = pattern.match(topic)
            if fields is not None:
                return fields["gateway_id"], kind
        return None

    def handle(self, message: Message) -> None:
        """Store one message on its own (one transaction)."""
        self.commit([self.prepare(message)])

    def commit(self, group: Sequence[Prepared]) -> None:
        """Store the writes of ``group`` in one transaction, then count them. Raises
        :class:`~bridge.cloud.errors.SinkStoreError` (nothing stored, nothing counted)."""
        todo = [p for p in group if p.write is not None]
        if not todo:
            return
        outcomes = self.store.store_group([p.write for p in todo if p.write is not None])
        for prepared, outcome in zip(todo, outcomes, strict=True):
            self._settle(prepared, outcome)
            write = prepared.write
            if self.on_file_status and isinstance(write, ControlWrite) and isinstance(write.record.record, FileStatus):
                self.on_file_status(write.record.stamp.gateway, write.record.record)

    def prepare(self, message: Message) -> Prepared:
        now = _now_ms()
        route = self._route(message.topic)
        if route is None:
            log.warning("ignoring message on unexpected topic %r", message.topic)
            return Prepared(message, None)
        gateway, topic = route
        if not valid_id(gateway):
            return _invalid(message, gateway[:64], "bad gateway id", repr(gateway))
        self.last_seen_ms[gateway] = now
        if topic == "status":
            return _status(gateway, message, now)
        if topic == "telemetry":
            return _telemetry(gateway, message, now)
        return _control(gateway, KIND_OF_TOPIC[topic], message, now)

    def _settle(self, prepared: Prepared, outcome: Outcome) -> None:
        c, write, topic = self.counters, prepared.write, prepared.message.topic
        if isinstance(outcome, InvalidRecord):
            c.invalid_reasons[outcome.reason] += 1
            log.warning("invalid message on %r: %s (%s)", topic, outcome.reason, outcome)
        elif isinstance(write, InvalidWrite):
            c.invalid_reasons[write.reason] += 1
            log.warning("invalid message on %r: %s (%s)", topic, write.reason, prepared.detail)
        elif isinstance(write, StatusWrite):
            self.gateway_state[write.gateway] = write.state
            c.status += 1
        elif not outcome:
            c.duplicates += 1
            log.debug("duplicate %s on %r dropped", prepared.kind, topic)
        elif isinstance(write, BatchWrite):
            c.batches += 1
            c.readings += len(write.batch.readings)
        elif prepared.kind == "alert":
            c.alerts += 1
        elif prepared.kind == "event":
            c.events += 1
        elif prepared.kind == "response":
            c.responses += 1
        elif prepared.kind == "file_status":
            c.file_statuses += 1
        else:
            c.config_acks += 1


def _invalid(message: Message, gateway: str, reason: str, detail: str) -> Prepared:
    return Prepared(message, InvalidWrite(gateway, reason), "invalid", detail)


def _telemetry(gateway: str, message: Message, now: int) -> Prepared:
    try:
        batch = decode_batch(message.payload, max_body_bytes=_MAX_BODY_BYTES)
    except CodecError as exc:
        return _invalid(message, gateway, _reason(exc), str(exc))
    if batch.gateway != gateway:
        return _invalid(message, gateway, "gateway mismatch", f"payload says {batch.gateway!r}")
    try:
        check_batch(batch)
    except InvalidRecord as exc:
        return _invalid(message, gateway, exc.reason, str(exc))
    return Prepared(message, BatchWrite(batch, now), "telemetry")


def _control(gateway: str, kind: ControlKind, message: Message, now: int) -> Prepared:
    try:
        raw = decode_control(message.payload)
        if raw.get("gw") != gateway:
            return _invalid(message, gateway, "gateway mismatch", f"payload says {raw.get('gw')!r}")
        if raw.get("kind") != kind:
            return _invalid(message, gateway, "kind mismatch", f"payload kind {raw.get('kind')!r}")
        return Prepared(message, ControlWrite(parse_control(raw), now), kind)
    except CodecError as exc:
        return _invalid(message, gateway, _reason(exc), str(exc))
    except InvalidRecord as exc:
        return _invalid(message, gateway, exc.reason, str(exc))


def _status(gateway: str, message: Message, now: int) -> Prepared:
    if not message.payload:  # a retained status being cleared
        return Prepared(message, None)
    try:
        state = message.payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        state = ""
    if not state or len(state) > _MAX_STATUS_CHARS or not state.isprintable():
        return _invalid(message, gateway, "bad status", repr(message.payload[:40]))
    return Prepared(message, StatusWrite(gateway, state, now), "status")
