"""Decode device messages: topic + payload -> readings, an event, a response, or a rejection.

Payloads may be a JSON object, a msgpack map, or (on the per-metric topic) a bare number.
Every problem becomes a :class:`Rejection` with a named reason; nothing raises, whatever the
payload (tests/unit/test_decode_fuzz.py checks it with hypothesis). Each value is decided here:
it is either one a telemetry batch carries exactly (:func:`bridge.protocol.codec.carried`) or it is rejected
on its own, so encoding the batch later cannot fail.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.protocol.codec import MAX_DECIMAL_INT, CodecError, carried, unpack_object
from bridge.protocol.model import Reading, Value
from bridge.protocol.topics import NAME_RE, TopicPattern, valid_id
from gateway.config import DecodeSection, TopicsSection
from gateway.process.clock import ClockGuard

# Rejection reasons (documented in docs/OPERATIONS.md).
TOO_LARGE = "too_large"
UNKNOWN_TOPIC = "unknown_topic"
BAD_DEVICE_ID = "bad_device_id"
BAD_METRIC_NAME = "bad_metric_name"
INVALID_JSON = "invalid_json"
INVALID_MSGPACK = "invalid_msgpack"
NOT_OBJECT = "not_object"
NOT_NUMERIC = "not_numeric"
NAN = "nan"
BAD_TS = "bad_ts"
TS_OUT_OF_WINDOW = "ts_out_of_window"
BAD_SEQ = "bad_seq"
TOO_MANY_METRICS = "too_many_metrics"
NO_METRICS = "no_metrics"
INT_OUT_OF_RANGE = "int_out_of_range"
TOO_DEEP = "too_deep"
REJECT_REASONS = (TOO_LARGE, UNKNOWN_TOPIC, BAD_DEVICE_ID, BAD_METRIC_NAME, INVALID_JSON, INVALID_MSGPACK, NOT_OBJECT,
                  NOT_NUMERIC, NAN, BAD_TS, TS_OUT_OF_WINDOW, BAD_SEQ, TOO_MANY_METRICS, NO_METRICS, INT_OUT_OF_RANGE,
                  TOO_DEEP)

_MS_THRESHOLD = 100_000_000_000  # a ts above this is milliseconds, below is seconds
_MAX_SEQ = 2**63  # seq deltas must fit a signed 64-bit msgpack integer
_MAX_TS_MS = 2**53  # a timestamp is an integer number of ms in [0, 2**53) (the year 287,000)
MAX_DEPTH = 32  # nesting of objects and arrays kept from an event or response body
_NAME_CACHE_MAX = 100_000  # validated ids/metric names remembered (bounded: ids come from the network)
_TOPIC_CACHE_MAX = 20_000  # topics remembered with their route and device (a few per device; bounded: each ~0.3 KB)
_MSGPACK_MAP_FIRST_BYTES = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
_RESERVED = frozenset({"ts", "seq"})
_json_decode = json.JSONDecoder().decode
_json_scan = json.JSONDecoder().raw_decode
_isfinite = math.isfinite
# Reading(...) runs the NamedTuple's Python-level __new__; tuple.__new__ builds the same object in C
_new_tuple = tuple.__new__


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str


@dataclass
class Telemetry:
    device: str
    readings: list[Reading]
    rejections: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True)
class DeviceEvent:
    device: str
    ts_ms: int
    body: dict[str, Any]


@dataclass(frozen=True)
class DeviceResponse:
    device: str
    body: dict[str, Any]


Decoded = Telemetry | DeviceEvent | DeviceResponse | Rejection
_Handler = Callable[[str, dict[str, str], bytes, int], Decoded]


class Decoder:
    """Turns raw local messages into typed messages according to the topic contract."""

    def __init__(self, topics: TopicsSection, limits: DecodeSection, clock: ClockGuard | None = None) -> None:
        self._telemetry = TopicPattern(topics.telemetry)
        self._metric = TopicPattern(topics.telemetry_metric)
        self._events = TopicPattern(topics.events)
        self._responses = TopicPattern(topics.responses)
        self._limits = limits
        self._past_ms, self._future_ms = limits.max_past_s * 1000, limits.max_future_s * 1000  # the ts window
        self._clock = clock
        self._routes = (
            (self._telemetry, self._decode_telemetry),
            (self._metric, self._decode_bare),
            (self._events, self._decode_event),
            (self._responses, self._decode_response),
        )
        self._good_names: set[str] = set()
        # topic -> (handler, device, topic fields) of topics seen with a valid device id (bounded)
        self._known_topics: dict[str, tuple[_Handler, str, dict[str, str]]] = {}

    def _valid_name(self, name: str, regex: Any = NAME_RE) -> bool:
        """Regex check with a bounded cache of names already seen valid (hot path)."""
        if name in self._good_names:
            return True
        if not isinstance(name, str) or not regex.fullmatch(name):
            return False
        if len(self._good_names) >= _NAME_CACHE_MAX:
            self._good_names.clear()
        self._good_names.add(name)
        return True

    def is_control(self, topic: str) -> bool:
        """True for device events and command responses (they take the control lane), by topic only."""
        return self._events.match(topic) is not None or self._responses.match(topic) is not None

    def subscriptions(self) -> list[str]:
        """MQTT filters covering every topic this decoder understands."""
        return [p.subscription() for p in (self._telemetry, self._metric, self._events, self._responses)]

    def device_of(self, topic: str) -> str | None:
        """The device id level of a device topic (valid or not), None for a topic of no known shape."""
        for pattern, _handler in self._routes:
            fields = pattern.match(topic)
            if fields is not None:
                return fields.get("device_id")
        return None

    def decode(self, topic: str, payload: bytes, recv_ms: int) -> Decoded:
        if len(payload) > self._limits.max_payload_bytes:
            return Rejection(TOO_LARGE, f"{len(payload)} bytes > {self._limits.max_payload_bytes}")
        known = self._known_topics.get(topic)
        if known is not None:  # the fields are only read by the handlers: shared between messages
            return known[0](known[1], known[2], payload, recv_ms)
        for pattern, handler in self._routes:
            fields = pattern.match(topic)
            if fields is None:
                continue
            device = fields.get("device_id", "")
            if not self._valid_name(device):
                return Rejection(BAD_DEVICE_ID, f"device id {device[:80]!r} in topic {topic[:120]!r}")
            if len(self._known_topics) >= _TOPIC_CACHE_MAX:
                self._known_topics.clear()
            self._known_topics[topic] = (handler, device, fields)
            return handler(device, fields, payload, recv_ms)
        return Rejection(UNKNOWN_TOPIC, topic[:200])

    # ------------------------------------------------------------ payload parsing

    @staticmethod
    def _parse(payload: bytes) -> Any | Rejection:
        if payload[:1] and payload[0] in _MSGPACK_MAP_FIRST_BYTES:
            try:
                return unpack_object(payload)
            except CodecError as exc:
                return Rejection(INVALID_MSGPACK, str(exc)[:200])
        try:
            text = payload.decode("utf-8")  # UTF-8 per RFC 8259; skips loads()' sniffing
            try:  # a bare JSON value first: no whitespace to skip before or after it
                obj, end = _json_scan(text)
                if end == len(text):
                    return obj
            except ValueError:
                pass
            return _json_decode(text)  # whitespace around the value, or the error to report
        except (ValueError, UnicodeDecodeError) as exc:
            return Rejection(INVALID_JSON, str(exc)[:200])
        except RecursionError:
            return Rejection(TOO_DEEP, "JSON nested too deeply to parse")

    def _in_window(self, ts_ms: int, recv_ms: int) -> bool:
        return recv_ms - self._past_ms <= ts_ms <= recv_ms + self._future_ms

    def _timestamp(self, raw: Any, recv_ms: int) -> int | Rejection:
        if type(raw) is int and _MS_THRESHOLD <= raw < _MAX_TS_MS:  # milliseconds, the common case
            ts_ms = raw
        elif raw is None:
            return recv_ms
        elif isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw < _MAX_TS_MS:
            return Rejection(BAD_TS, f"ts {_shown(raw)} is not a number in [0, 2**53)")
        else:
            ts_ms = int(raw) if raw >= _MS_THRESHOLD else round(raw * 1000)
        clock = self._clock
        if clock is not None and not clock.trusted(recv_ms):
            # The gateway's own clock cannot judge it: only a ts before the floor date is out of window.
            if ts_ms >= clock.floor_ms - self._past_ms:
                return ts_ms
        elif recv_ms - self._past_ms <= ts_ms <= recv_ms + self._future_ms:
            return ts_ms
        if self._limits.out_of_window == "clamp":
            return recv_ms
        return Rejection(TS_OUT_OF_WINDOW, f"ts {ts_ms} ms is {(ts_ms - recv_ms) / 1000:+.0f} s from now")

    def _mark(self, raw_ts: Any, ts_ms: int, recv_ms: int, readings: int) -> None:
        """Count readings kept while the gateway's clock is unsynced (see gateway.process.clock)."""
        if self._clock is None or not readings or self._clock.trusted(recv_ms):
            return
        if raw_ts is None:
            self._clock.receive_stamped_unsynced += readings
        elif not self._in_window(ts_ms, recv_ms):
            self._clock.window_not_judged += readings

    @staticmethod
    def _value(metric: str, raw: Any) -> Value | Rejection:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            return Rejection(NOT_NUMERIC, f"{metric}: {type(raw).__name__} {_shown(raw)}")
        value = carried(raw)
        if value is None:
            if isinstance(raw, float):
                return Rejection(NAN, f"{metric}: {raw}")
            return Rejection(INT_OUT_OF_RANGE, f"{metric}: {_shown(raw)} is outside [-2**63, 2**64)")
        return value

    # ------------------------------------------------------------ per topic kind

    def _decode_telemetry(self, device: str, _f: dict[str, str], payload: bytes, recv_ms: int) -> Decoded:
        obj = self._parse(payload)
        if isinstance(obj, Rejection):
            return obj
        if not isinstance(obj, dict):
            return Rejection(NOT_OBJECT, f"payload is a {type(obj).__name__}, expected an object")
        ts = self._timestamp(obj.get("ts"), recv_ms)
        if isinstance(ts, Rejection):
            return ts
        seq = obj.get("seq")
        if seq is not None and (type(seq) is not int or not 0 <= seq < _MAX_SEQ):  # bool is not int here
            return Rejection(BAD_SEQ, f"seq {str(seq)[:40]!r} is not an integer in [0, 2**63)")
        metrics = [k for k in obj if k not in _RESERVED]
        if not metrics:
            return Rejection(NO_METRICS, "object has no metric fields")
        if len(metrics) > self._limits.max_metrics_per_message:
            return Rejection(TOO_MANY_METRICS, f"{len(metrics)} > {self._limits.max_metrics_per_message}")
        out = Telemetry(device, [])
        readings, good = out.readings, self._good_names
        for metric in metrics:
            raw = obj[metric]  # the common cases inline: a finite float, an integer a double holds exactly
            if metric in good and ((type(raw) is float and _isfinite(raw))
                                   or (type(raw) is int and -MAX_DECIMAL_INT <= raw <= MAX_DECIMAL_INT)):
                readings.append(_new_tuple(Reading, (device, metric, ts, float(raw), seq)))  # as carried()
                continue
            if not self._valid_name(metric):
                out.rejections.append(Rejection(BAD_METRIC_NAME, _shown(metric)))
                continue
            value = self._value(metric, raw)
            if isinstance(value, Rejection):
                out.rejections.append(value)
            else:
                readings.append(_new_tuple(Reading, (device, metric, ts, value, seq)))
        self._mark(obj.get("ts"), ts, recv_ms, len(out.readings))
        return out

    def _decode_bare(self, device: str, fields: dict[str, str], payload: bytes, recv_ms: int) -> Decoded:
        metric = fields.get("metric", "")
        if not valid_id(metric):
            return Rejection(BAD_METRIC_NAME, metric[:80])
        if payload[:1] and payload[0] in _MSGPACK_MAP_FIRST_BYTES:
            return Rejection(NOT_NUMERIC, f"{metric}: per-metric topics take a bare number")
        try:
            text = payload.decode("ascii").strip()
        except UnicodeDecodeError:
            return Rejection(NOT_NUMERIC, f"{metric}: {payload[:40]!r}")
        raw = _number(text)
        if raw is None:
            return Rejection(NOT_NUMERIC, f"{metric}: {payload[:40]!r}")
        value = self._value(metric, raw)
        if isinstance(value, Rejection):
            return value
        self._mark(None, recv_ms, recv_ms, 1)
        return Telemetry(device, [Reading(device, metric, recv_ms, value, None)])

    def _object(self, payload: bytes) -> dict[str, Any] | Rejection:
        obj = self._parse(payload)
        if isinstance(obj, Rejection):
            return obj
        if not isinstance(obj, dict):
            return Rejection(NOT_OBJECT, f"payload is a {type(obj).__name__}, expected an object")
        return obj

    def _decode_event(self, device: str, _f: dict[str, str], payload: bytes, recv_ms: int) -> Decoded:
        obj = self._object(payload)
        if isinstance(obj, Rejection):
            return obj
        ts = self._timestamp(obj.get("ts"), recv_ms)
        body = _json_safe(obj)
        if body is None:
            return Rejection(TOO_DEEP, f"event nested deeper than {MAX_DEPTH} levels")
        return DeviceEvent(device, recv_ms if isinstance(ts, Rejection) else ts, body)

    def _decode_response(self, device: str, _f: dict[str, str], payload: bytes, _recv_ms: int) -> Decoded:
        obj = self._object(payload)
        if isinstance(obj, Rejection):
            return obj
        body = _json_safe(obj)
        if body is None:
            return Rejection(TOO_DEEP, f"response nested deeper than {MAX_DEPTH} levels")
        return DeviceResponse(device, body)


class _TooDeep(Exception):
    pass


def _json_safe(obj: dict[Any, Any]) -> dict[str, Any] | None:
    """Make a device object safe to re-encode as strict JSON (string keys, no NaN, at most
    :data:`MAX_DEPTH` levels); None if it is nested deeper."""

    def clean(v: Any, depth: int) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            if -(2**63) <= v < 2**64:
                return v
            return str(v) if v.bit_length() < 14_000 else _shown(v)  # str() refuses over 4,300 digits
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, (dict, list, tuple)) and depth >= MAX_DEPTH:
            raise _TooDeep
        if isinstance(v, dict):
            return {_key(k): clean(x, depth + 1) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x, depth + 1) for x in v]
        if isinstance(v, bytes):
            return v.hex()
        return _shown(v, 200)  # anything else a msgpack payload can carry (ext types, timestamps)

    try:
        return {_key(k): clean(v, 1) for k, v in obj.items()}
    except _TooDeep:
        return None


def _key(k: Any) -> str:
    return k if isinstance(k, str) else _shown(k, 200)


def _shown(value: Any, limit: int = 40) -> str:
    """``repr`` cut to ``limit`` characters, for details and non-string keys; never raises (a huge
    integer is shown by its size instead of its 4,300+ digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<integer of {value.bit_length()} bits>"
    if isinstance(value, (dict, list, tuple)):  # no repr: it could be nested deep enough to recurse
        return f"<{type(value).__name__} of {len(value)}>"
    if isinstance(value, (str, bytes)):
        value = value[:limit]
    return repr(value)[:limit]


def _number(text: str) -> int | float | None:
    """A bare number: an integer literal stays an exact integer, anything else is a float."""
    parse: type[int] | type[float]
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            continue
    return None
