"""The topic contract: id validation, local topic patterns and the cloud topic tree.

A pattern is a topic with ``{placeholders}`` that each stand for exactly one topic level, e.g.
``devices/{device_id}/telemetry``. Values put into topics are validated first, so a ``/``, ``+``,
``#`` or empty id never becomes part of a topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from bridge.protocol.file_topics import FileTopics

# The one id grammar (device ids, metric names, gateway ids, command names, stream ids): 1 to 64
# characters from [A-Za-z0-9_.-], the first one not '.' or '-'. So an id is never empty, never
# '.' or '..' (nor any other name starting with a dot), never an option-like '-x', and never holds
# '/', '\\', '+', '#', '$', a space or a control character: it cannot act as a path, a
# wildcard or more than one topic level. device_sim/topics.py keeps its own copy (it may not
# import bridge/); tests/test_id_grammar.py checks that both agree on every string.
ID_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"
ID_RULE = "1 to 64 of A-Z a-z 0-9 _ . -, not starting with '.' or '-'"  # for error messages
DEVICE_ID_RE = re.compile(ID_PATTERN)
NAME_RE = DEVICE_ID_RE
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")

DEFAULT_PREFIX = "edge/{gateway_id}"
"""The default cloud topic prefix pattern (``topics.cloud_prefix``, the cloud tools' ``--prefix``)."""

ControlKind = Literal["alert", "event", "response", "config_status", "file_status"]
CONTROL_TOPICS: dict[ControlKind, str] = {
    "alert": "alerts", "event": "events", "response": "responses", "config_status": "config/status",
    "file_status": "files/status",
}
"""The one kind -> topic map: a control record of each kind goes up on ``{prefix}/<this>``."""
KIND_OF_TOPIC: dict[str, ControlKind] = {topic: kind for kind, topic in CONTROL_TOPICS.items()}
UPLINK_TOPICS = ("telemetry", *CONTROL_TOPICS.values(), "status")
"""Every topic a gateway publishes under its prefix that a consumer stores (not ``stats``)."""


def valid_id(value: object) -> bool:
    """True for ids that may become one topic level (see ``ID_PATTERN``); False for non-strings."""
    return isinstance(value, str) and DEVICE_ID_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class TopicPattern:
    """A topic pattern with one-level placeholders."""

    pattern: str

    def __post_init__(self) -> None:
        levels = self.pattern.split("/")
        for level in levels:
            if "+" in level or "#" in level:
                raise ValueError(f"pattern {self.pattern!r} must not contain MQTT wildcards")
            if _PLACEHOLDER.search(level) and not _PLACEHOLDER.fullmatch(level):
                raise ValueError(f"placeholder must fill a whole topic level in {self.pattern!r}")
        object.__setattr__(self, "_regex", re.compile(self._to_regex()))

    def _to_regex(self) -> str:
        parts = []
        for level in self.pattern.split("/"):
            m = _PLACEHOLDER.fullmatch(level)
            parts.append(f"(?P<{m[1]}>[^/]*)" if m else re.escape(level))
        return "/".join(parts)

    @property
    def fields(self) -> list[str]:
        return _PLACEHOLDER.findall(self.pattern)

    def subscription(self, **fixed: str) -> str:
        """MQTT filter: fixed placeholders filled in, the others as ``+``."""
        return "/".join(
            fixed.get(m[1], "+") if (m := _PLACEHOLDER.fullmatch(level)) else level
            for level in self.pattern.split("/")
        )

    def match(self, topic: str) -> dict[str, str] | None:
        m = self._regex.fullmatch(topic)  # type: ignore[attr-defined]
        return None if m is None else dict(m.groupdict())

    def format(self, **values: str) -> str:
        for key, value in values.items():
            if not valid_id(value):
                raise ValueError(f"{key} {value!r} is not a valid topic level")
        return self.pattern.format(**values)


@dataclass(frozen=True)
class CloudTopics:
    """The cloud-side topic tree of one gateway, under ``{prefix}`` (default :data:`DEFAULT_PREFIX`)."""

    gateway_id: str
    prefix_pattern: str = DEFAULT_PREFIX

    @property
    def prefix(self) -> str:
        return TopicPattern(self.prefix_pattern).format(gateway_id=self.gateway_id)

    @property
    def telemetry(self) -> str:
        return f"{self.prefix}/telemetry"

    @property
    def alerts(self) -> str:
        return self.control("alert")

    @property
    def events(self) -> str:
        return self.control("event")

    @property
    def responses(self) -> str:
        return self.control("response")

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def stats(self) -> str:
        return f"{self.prefix}/stats"

    @property
    def commands_filter(self) -> str:
        return f"{self.prefix}/commands/+/+"

    @property
    def config(self) -> str:
        return f"{self.prefix}/config"

    @property
    def config_status(self) -> str:
        return self.control("config_status")

    @property
    def files(self) -> FileTopics:
        """The file-transfer topics (manifests, chunks, receipts) under the prefix."""
        return FileTopics(self.prefix)

    @property
    def file_status(self) -> str:
        return self.control("file_status")

    def control(self, kind: ControlKind) -> str:
        """The topic of a control record of ``kind``."""
        return f"{self.prefix}/{CONTROL_TOPICS[kind]}"
