"""Device ids and the device-side topic contract (``devices/{device_id}/...``)."""

from __future__ import annotations

import re
import string

from device_sim.errors import SimConfigError

# The gateway's id grammar (a copy: device_sim may not import bridge/; a test checks both agree):
# 1 to 64 characters from [A-Za-z0-9_.-], the first one not '.' or '-'.
ID_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"
DEVICE_ID_RE = re.compile(ID_PATTERN)
PREFIX_RE = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_.-]*)?")
METRIC_RE = DEVICE_ID_RE
DEFAULT_TEMPLATE = "devices/{device_id}/telemetry"
COMMANDS_ALL = "devices/+/commands/+"
_PLACEHOLDERS = {"device_id", "metric"}


def is_valid_device_id(device_id: object) -> bool:
    return isinstance(device_id, str) and DEVICE_ID_RE.fullmatch(device_id) is not None


def device_ids(prefix: str, count: int) -> list[str]:
    """``count`` ids ``{prefix}{n:04d}`` for n = 1..count; rejects a prefix that breaks the id rule."""
    if PREFIX_RE.fullmatch(prefix) is None:
        raise SimConfigError(f"id prefix {prefix!r} may only use letters, digits, '_', '.' and '-', "
                             "and may not start with '.' or '-'")
    ids = [f"{prefix}{n:04d}" for n in range(1, count + 1)]
    if ids and len(ids[-1]) > 64:
        raise SimConfigError(f"id prefix {prefix!r} is too long: device ids are limited to 64 characters")
    return ids


def check_template(template: str) -> None:
    """Reject a telemetry topic template that could not produce a valid topic."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise SimConfigError(f"bad topic template {template!r}: {exc}") from exc
    unknown = fields - _PLACEHOLDERS
    if unknown:
        raise SimConfigError(
            f"bad topic template {template!r}: unknown placeholder(s) {sorted(unknown)}; "
            "use {device_id} and optionally {metric}")
    if "device_id" not in fields:
        raise SimConfigError(f"bad topic template {template!r}: it must contain {{device_id}}")
    if any(ch in template for ch in "+#\0") or template.startswith("$") or not template.strip("/"):
        raise SimConfigError(f"bad topic template {template!r}: no wildcards, '$' prefix or empty topic")


def has_metric(template: str) -> bool:
    return "{metric}" in template


def telemetry_topic(template: str, device_id: str, metric: str | None = None) -> str:
    """The telemetry topic; with a metric and no ``{metric}`` placeholder, ``/{metric}`` is appended."""
    if metric is not None and not has_metric(template):
        template = template + "/{metric}"
    return template.format(device_id=device_id, metric=metric or "")


def events_topic(device_id: str) -> str:
    return f"devices/{device_id}/events"


def responses_topic(device_id: str) -> str:
    return f"devices/{device_id}/responses"


def commands_filter(device_id: str) -> str:
    return f"devices/{device_id}/commands/+"


def parse_command_topic(topic: str) -> tuple[str, str] | None:
    """``devices/{id}/commands/{name}`` → ``(id, name)``; anything else → None."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "devices" or parts[2] != "commands" or not parts[3]:
        return None
    return parts[1], parts[3]
