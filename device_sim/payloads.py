"""Payload encoding: the only module that imports msgpack.

Telemetry objects are ``{"ts": epoch_ms, "seq": n, "<metric>": value, ...}`` in JSON or msgpack;
``bare`` payloads are the number as ASCII text. Events and command responses are always JSON.
NaN is written as the JSON token ``NaN`` (Python's default), which is what garbage readings need.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import msgpack

from device_sim.anomalies import Value

Format = Literal["json", "msgpack", "bare"]
FORMATS: tuple[Format, ...] = ("json", "msgpack", "bare")


def encode_object(fields: Mapping[str, Any], fmt: Format) -> bytes:
    if fmt == "msgpack":
        packed: bytes = msgpack.packb(dict(fields), use_bin_type=True)
        return packed
    if fmt == "json":
        return encode_json(fields)
    raise ValueError(f"format {fmt!r} does not carry objects")


def telemetry(ts_ms: int, seq: int, values: Mapping[str, Value], fmt: Format) -> bytes:
    """A telemetry object: ``ts`` and ``seq`` first, then the metrics."""
    return encode_object({"ts": ts_ms, "seq": seq, **values}, fmt)


def bare(value: Value) -> bytes:
    """A bare reading: ``21.37``, ``1480``, ``nan`` or the garbage string itself."""
    if isinstance(value, str):
        return value.encode("utf-8")
    return repr(value).encode("ascii")


def encode_json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_json(payload: bytes) -> Any:
    """Parse a JSON payload (raises ``ValueError`` on bad UTF-8 or JSON)."""
    return json.loads(payload.decode("utf-8"))
