"""Command payload parsing and responses (pure).

A command arrives on ``devices/{id}/commands/{name}`` as JSON
``{"id": "...", "args": {...}, "expires": epoch_seconds}`` (``args`` and ``expires`` optional). The
device answers on ``devices/{id}/responses`` with ``{"id": ..., "status": ..., "result": ...}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from device_sim.errors import CommandError
from device_sim.payloads import decode_json

Status = Literal["ok", "error", "unknown_command", "expired"]
BUILTIN_COMMANDS = ("set_rate", "set_setpoint", "reboot", "ping")


@dataclass(frozen=True)
class Command:
    name: str
    id: str | int
    args: dict[str, Any] = field(default_factory=dict)
    expires: float | None = None

    def expired(self, now_s: float) -> bool:
        return self.expires is not None and self.expires < now_s


def parse_command(name: str, payload: bytes) -> Command:
    """Parse a command payload; raises :class:`CommandError` (with the id when it could be read)."""
    try:
        data = decode_json(payload)
    except ValueError as exc:
        raise CommandError(f"payload is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CommandError("payload must be a JSON object")
    cid = data.get("id")
    if isinstance(cid, bool) or not isinstance(cid, str | int) or cid == "":
        raise CommandError("missing or invalid 'id' (a non-empty string or an integer)")
    args = data.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise CommandError("'args' must be a JSON object", cid)
    expires = data.get("expires")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int | float)
                                or not math.isfinite(expires)):
        raise CommandError("'expires' must be a number of epoch seconds", cid)
    return Command(name=name, id=cid, args=args, expires=float(expires) if expires is not None else None)


def response(command_id: str | int, status: Status, result: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": command_id, "status": status}
    if result is not None:
        body["result"] = result
    return body


def number_arg(args: dict[str, Any], key: str, cid: str | int) -> float:
    value = args.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CommandError(f"args.{key} must be a finite number", cid)
    return float(value)
