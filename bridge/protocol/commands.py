"""Cloud -> gateway commands: parse and validate them (the "Commands" section of docs/PROTOCOL.md).

Pure: no I/O, no clock of its own. A command arrives on ``{prefix}/commands/{device_id}/{name}``
with a JSON payload ``{"id": ..., "args": {...}, "expires": epoch_s, "ttl_s": s}``. The gateway
subscribes to ``{prefix}/commands/#``, so a topic with a missing or extra level still reaches
:func:`parse_command` and gets an answer instead of vanishing. Nothing read from the cloud becomes
part of a local topic unless it passed :func:`bridge.protocol.topics.valid_id`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from bridge.protocol.topics import ID_RULE, valid_id

MAX_ID_CHARS = 64
SHOWN_CHARS = 64  # offending device ids / names are echoed back truncated to this
_READ_ID_MAX_BYTES = 1024 * 1024  # an oversized payload is still read (up to this) for its id

# rejection reasons (``result.reason_code`` of a ``rejected`` answer, and the counter labels)
BAD_TOPIC = "bad_topic"
BAD_DEVICE = "bad_device"
BAD_NAME = "bad_name"
TOO_LARGE = "too_large"
BAD_JSON = "bad_json"
BAD_ID = "bad_id"
BAD_ARGS = "bad_args"
BAD_EXPIRY = "bad_expiry"
RETAINED = "retained"
NOT_ALLOWED = "not_allowed"
REJECT_REASONS = (BAD_TOPIC, BAD_DEVICE, BAD_NAME, TOO_LARGE, BAD_JSON, BAD_ID, BAD_ARGS, BAD_EXPIRY, RETAINED,
                  NOT_ALLOWED)

CommandId = str | int


@dataclass(frozen=True)
class CommandLimits:
    max_bytes: int = 4096


@dataclass(frozen=True)
class Command:
    """A valid command. ``expires`` is absolute epoch seconds (``ttl_s`` already folded in)."""

    device: str
    name: str
    id: CommandId
    args: dict[str, Any] = field(default_factory=dict)
    expires: float | None = None

    def expired(self, now_s: float) -> bool:
        return self.expires is not None and self.expires <= now_s

    def local_payload(self) -> bytes:
        """The payload devices get on their local command topic."""
        body: dict[str, Any] = {"id": self.id, "args": self.args}
        if self.expires is not None:
            body["expires"] = self.expires
        return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class CommandRejected:
    """A command that must not be delivered. ``device``/``name`` are what the topic said, truncated
    to 64 characters; ``id`` is None when the payload had no readable id."""

    device: str
    name: str
    id: CommandId | None
    reason: str  # one of the reason constants above
    detail: str


def _shown(value: str) -> str:
    return value[:SHOWN_CHARS]


def split_command_topic(suffix: str) -> tuple[str, str, str | None]:
    """``device/name`` (the part after ``.../commands/``) -> (device, name, problem or None)."""
    levels = suffix.split("/")
    if len(levels) != 2:
        device = levels[0]
        return _shown(device), _shown("/".join(levels[1:])), (
            f"expected commands/{{device_id}}/{{name}}, got {len(levels)} level(s) after 'commands/'")
    return levels[0], levels[1], None


def _read_id(data: Any) -> tuple[CommandId | None, str | None]:
    if not isinstance(data, dict) or "id" not in data:
        return None, "missing 'id'"
    cid = data["id"]
    if isinstance(cid, bool) or not isinstance(cid, (str, int)):
        return None, "'id' must be a string or an integer"
    if isinstance(cid, str) and not 0 < len(cid) <= MAX_ID_CHARS:
        return None, f"'id' must be 1 to {MAX_ID_CHARS} characters"
    if isinstance(cid, int) and not -(2**63) <= cid < 2**63:
        return None, "'id' is out of the 64-bit integer range"
    return cid, None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def parse_command(suffix: str, payload: bytes, now_s: float, limits: CommandLimits,
                  *, retained: bool = False) -> Command | CommandRejected:
    """Validate one command. ``suffix`` is the topic after ``{prefix}/commands/``; ``now_s`` turns a
    ``ttl_s`` into an absolute ``expires``. Expiry itself is not judged here (a held command can
    expire later too)."""
    device, name, topic_problem = split_command_topic(suffix)
    data: Any = None
    json_problem: str | None = None
    if len(payload) <= max(limits.max_bytes, _READ_ID_MAX_BYTES):
        try:
            data = json.loads(payload, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            json_problem = f"payload is not valid JSON: {str(exc)[:80]}"
    else:
        json_problem = "payload not read"
    cid, id_problem = _read_id(data)

    def rejected(reason: str, detail: str) -> CommandRejected:
        return CommandRejected(_shown(device), _shown(name), cid, reason, detail)

    if retained:  # first: whatever else is wrong with it, it must never run
        return rejected(RETAINED, "commands must not be published retained")
    if topic_problem:
        return rejected(BAD_TOPIC, topic_problem)
    if not valid_id(device):
        return rejected(BAD_DEVICE, f"device id must be {ID_RULE}")
    if not valid_id(name):
        return rejected(BAD_NAME, f"command name must be {ID_RULE}")
    if len(payload) > limits.max_bytes:
        return rejected(TOO_LARGE, f"payload is {len(payload)} bytes, the limit is {limits.max_bytes}")
    if json_problem:
        return rejected(BAD_JSON, json_problem)
    if not isinstance(data, dict):
        return rejected(BAD_JSON, "payload must be a JSON object")
    if id_problem or cid is None:
        return rejected(BAD_ID, id_problem or "missing 'id'")
    args = data.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return rejected(BAD_ARGS, "'args' must be a JSON object")
    unknown = sorted(set(data) - {"id", "args", "expires", "ttl_s"})
    if unknown:
        return rejected(BAD_ARGS, f"unknown field(s): {', '.join(k[:32] for k in unknown[:5])}")
    expires: float | None = None
    if data.get("expires") is not None:
        if not _finite(data["expires"]):
            return rejected(BAD_EXPIRY, "'expires' must be a number of epoch seconds")
        expires = float(data["expires"])
    if data.get("ttl_s") is not None:
        ttl = data["ttl_s"]
        if not _finite(ttl) or ttl < 0:
            return rejected(BAD_EXPIRY, "'ttl_s' must be a number of seconds >= 0")
        expires = now_s + float(ttl) if expires is None else min(expires, now_s + float(ttl))
    return Command(device, name, cid, args, expires)
