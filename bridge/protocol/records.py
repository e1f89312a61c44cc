"""Control records: one typed class per kind, shared by the gateway (producer) and the sink (consumer).

A control record goes up one per message on ``{prefix}/<topic of its kind>`` (see
:data:`bridge.protocol.topics.CONTROL_TOPICS`) as a compact UTF-8 JSON object with sorted keys and
no NaN (docs/PROTOCOL.md, "Control records"). The producer builds the kind's object (:class:`Alert`,
:class:`Event`, :class:`Response`, :class:`ConfigStatus`); the lane writer names it with a
:class:`Stamp` ``(gateway, stream, seq)`` when it stores it, and :func:`encode_control` writes both
as one object. The consumer decodes the object (:func:`decode_control`) and validates it through
the same classes (:func:`parse_control`), which give either a :class:`Stamped` record or an
:class:`~bridge.protocol.errors.InvalidRecord` naming the reason.

What the consumer checks is what the sink always checked: an alert and an event are checked field
by field; of a response only ``device`` (a string, maybe empty) and ``status`` (a non-empty string),
of a config status only ``status``. Their other fields are passed on as the JSON they hold
(:data:`Json`): a device's response ``id`` and ``result`` are whatever the device sent, and
records of older gateways may lack fields (missing ones read as ``None``). Keys a consumer does not
know are ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeAlias

from bridge.protocol.errors import CodecError, InvalidRecord
from bridge.protocol.files import valid_file_id
from bridge.protocol.model import Value
from bridge.protocol.topics import ControlKind, valid_id

__all__ = [
    "Alert", "AlertState", "ConfigStatus", "ControlOut", "ControlRecord", "Event", "FileStatus", "InvalidRecord",
    "Json", "Response", "Stamp", "Stamped", "decode_control", "encode_control", "json_bytes", "parse_control",
    "to_wire",
]

Json: TypeAlias = Any
"""Any JSON value, passed on as it is (not checked by the consumer)."""
AlertState = Literal["raised", "cleared"]
MALFORMED = "malformed record"
_ALERT_STATES: dict[str, AlertState] = {"raised": "raised", "cleared": "cleared"}
_INT64 = 2**63


@dataclass(frozen=True)
class Alert:
    """A threshold crossing: ``state`` is ``raised`` when ``value`` crosses ``threshold`` at ``level``
    (``max``/``min``), ``cleared`` when it comes back past it by the rule's hysteresis."""

    kind: ClassVar[Literal["alert"]] = "alert"
    device: str
    metric: str
    level: str
    state: AlertState
    value: Value
    threshold: float
    ts_ms: int
    rule: str


@dataclass(frozen=True)
class Event:
    """A device-raised event: the device's own JSON object, with its time."""

    kind: ClassVar[Literal["event"]] = "event"
    device: str
    ts_ms: int
    event: dict[str, Json]


@dataclass(frozen=True)
class Response:
    """The one answer to a command: from the device (``source`` ``device``) or from the gateway.
    ``device`` may be empty (a rejected command whose topic had none)."""

    kind: ClassVar[Literal["response"]] = "response"
    device: str
    command: Json  # the command name (str), None when the device's answer matched no command
    id: Json  # the command's id as the cloud or the device sent it; None when unreadable
    status: str
    result: Json
    source: Json  # "device" or "gateway"
    rtt_ms: Json  # float, None for gateway answers


@dataclass(frozen=True)
class ConfigStatus:
    """The gateway's answer to a pushed config document (no device)."""

    kind: ClassVar[Literal["config_status"]] = "config_status"
    version: Json  # int, None when the document had no readable version
    status: str
    errors: Json  # list of {"key", "reason"}
    current_version: Json  # int


@dataclass(frozen=True)
class FileStatus:
    """Where a file transfer stands, from the gateway (docs/PROTOCOL.md, "File transfer"). For an
    upload (``direction`` ``up``): ``sent`` (every chunk acknowledged by the cloud broker), ``stored``
    (the receiver has it whole) or ``failed``; for a download (``down``): ``missing`` (send these
    chunks, as ``[first, last]`` ranges, and the manifest too when ``manifest`` is set),
    ``received`` (verified and installed) or ``failed``. ``reason`` says why it failed, and for a
    download's ``missing`` why it was sent (``opened``, ``manifest``, ``reconnect``, ``stalled``,
    ``progress``: the full list; ``busy``, ``unknown_file`` or a chunk's refusal reason: just those)."""

    kind: ClassVar[Literal["file_status"]] = "file_status"
    id: str
    direction: str
    state: str
    name: Json = None
    size: Json = None
    sha256: Json = None
    reason: str = ""
    missing: Json = None  # [[first, last], ...] for state "missing"
    manifest: Json = None  # True when the manifest is missing too (state "missing")
    device: Json = None
    path: Json = None  # where a received download was installed (relative to the inbox)


ControlRecord: TypeAlias = Alert | Event | Response | ConfigStatus | FileStatus
ControlOut: TypeAlias = Callable[[ControlRecord], None]
"""Where a producer hands its control records (the gateway's control lane)."""


@dataclass(frozen=True)
class Stamp:
    """What names a control record forever: gateway id, stream (``""`` for records of gateways
    before stream ids) and control-lane sequence number."""

    gateway: str
    seq: int
    stream: str = ""


@dataclass(frozen=True)
class Stamped:
    """A control record as received: its name and the record."""

    stamp: Stamp
    record: ControlRecord

    @property
    def kind(self) -> ControlKind:
        return self.record.kind


# ---------------------------------------------------------------- producer side

def to_wire(record: ControlRecord, stamp: Stamp) -> dict[str, Json]:
    """The JSON object of a record (every field of its class, ``kind``, ``gw``, ``stream``, ``seq``)."""
    return {**vars(record), "kind": record.kind, "gw": stamp.gateway, "stream": stamp.stream, "seq": stamp.seq}


def json_bytes(obj: Mapping[str, Json]) -> bytes:
    """The wire's JSON form: compact, keys sorted, UTF-8; NaN and infinities raise ValueError."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, sort_keys=True).encode()


def encode_control(record: ControlRecord, stamp: Stamp) -> bytes:
    """The payload of one control record."""
    return json_bytes(to_wire(record, stamp))


# ---------------------------------------------------------------- consumer side

def decode_control(payload: bytes) -> dict[str, Json]:
    """The JSON object of a control record payload (not yet validated: see :func:`parse_control`)."""
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CodecError(f"control record is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise CodecError("control record is not a JSON object")
    try:  # JSON may spell a lone surrogate (\ud800), which no UTF-8 text (or database) can hold
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CodecError(f"control record is not valid Unicode text: {exc.reason}") from exc
    return obj


def parse_control(obj: Mapping[str, Json]) -> Stamped:
    """Validate a decoded control record; raise :class:`InvalidRecord` on anything missing or
    mistyped (reasons: ``malformed record``, ``bad gateway id``, ``bad stream id``, ``unknown kind``)."""
    stamp = _stamp(obj)
    kind = obj.get("kind")
    if kind == "config_status":
        return Stamped(stamp, ConfigStatus(obj.get("version"), _str(obj, "status"), obj.get("errors"),
                                           obj.get("current_version")))
    if kind == "response":
        return Stamped(stamp, _response(obj))
    if kind == "file_status":
        return Stamped(stamp, _file_status(obj))
    device = _str(obj, "device")
    if kind == "alert":
        return Stamped(stamp, _alert(obj, device))
    if kind == "event":
        return Stamped(stamp, Event(device, _int(obj, "ts_ms"), _object(obj, "event")))
    raise InvalidRecord("unknown kind", repr(kind)[:80])


def _stamp(obj: Mapping[str, Json]) -> Stamp:
    gateway = _str(obj, "gw")
    if not valid_id(gateway):
        raise InvalidRecord("bad gateway id", repr(gateway)[:80])
    seq = _int(obj, "seq")
    if seq < 0:
        raise InvalidRecord(MALFORMED, f"negative seq {seq}")
    stream = obj.get("stream", "")  # records of gateways before stream ids have none
    if stream != "" and not valid_id(stream):
        raise InvalidRecord("bad stream id", repr(stream)[:80])
    return Stamp(gateway, seq, stream)


def _alert(obj: Mapping[str, Json], device: str) -> Alert:
    given = _str(obj, "state")
    state = _ALERT_STATES.get(given)
    if state is None:
        raise InvalidRecord(MALFORMED, f"alert state {given!r:.40}")
    return Alert(device, _str(obj, "metric"), _str(obj, "level"), state, _number(obj, "value"),
                 _number(obj, "threshold"), _int(obj, "ts_ms"), _str(obj, "rule"))


def _response(obj: Mapping[str, Json]) -> Response:
    device = obj.get("device")  # may be empty: the gateway answers commands whose topic had no device
    if not isinstance(device, str):
        raise InvalidRecord(MALFORMED, f"'device' must be a string, got {device!r:.40}")
    status = _str(obj, "status")
    return Response(device, obj.get("command"), obj.get("id"), status, obj.get("result"), obj.get("source"),
                    obj.get("rtt_ms"))


def _file_status(obj: Mapping[str, Json]) -> FileStatus:
    file_id, direction = _str(obj, "id"), _str(obj, "direction")
    if not valid_file_id(file_id) or direction not in ("up", "down"):  # ids may name files on a consumer's disk
        raise InvalidRecord(MALFORMED, f"file id {file_id!r:.40} or direction {direction!r:.10}")
    reason = obj.get("reason", "")
    return FileStatus(file_id, direction, _str(obj, "state"), obj.get("name"),
                      obj.get("size"), obj.get("sha256"), reason if isinstance(reason, str) else str(reason),
                      obj.get("missing"), obj.get("manifest"), obj.get("device"), obj.get("path"))


def _int(obj: Mapping[str, Json], key: str) -> int:
    value = obj.get(key)
    if type(value) is not int or not -_INT64 <= value < _INT64:
        raise InvalidRecord(MALFORMED, f"{key!r} must be a 64-bit integer, got {value!r:.40}")
    return value


def _number(obj: Mapping[str, Json], key: str) -> Value:
    """A finite JSON number that a double can hold, kept as it is (an integer stays an integer)."""
    value = obj.get(key)
    if type(value) is int or type(value) is float:
        try:
            if math.isfinite(value):
                return value
        except OverflowError:  # an integer beyond the doubles
            pass
    raise InvalidRecord(MALFORMED, f"{key!r} must be a finite number, got {value!r:.40}")


def _str(obj: Mapping[str, Json], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRecord(MALFORMED, f"{key!r} must be a non-empty string, got {value!r:.40}")
    return value


def _object(obj: Mapping[str, Json], key: str) -> dict[str, Json]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise InvalidRecord(MALFORMED, f"{key!r} must be an object, got {type(value).__name__}")
    return value
