"""Access policy for the embedded broker, free of amqtt: who may connect, as whom, and which topics
each identity may publish to, subscribe to and receive.

Patterns are MQTT topic filters with ``{device_id}`` in place of the identity (like mosquitto's
``pattern ... %u``). A device publishes only to topics its publish filters match; a subscription
is allowed only when one of its subscribe filters covers every topic the requested filter can
match (so ``devices/d1/commands/#`` covers ``devices/d1/commands/+`` but not ``#``). The gateway's
internal identity may do anything; no device id can equal it (``$`` is never part of a device id).

Denials are counted by reason and logged at most once per ``(identity, reason)`` every
``LOG_EVERY_S`` seconds, with the number of denials left out of the log since the last line.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

log = logging.getLogger(__name__)

INTERNAL_IDENTITY = "$gateway"
LOG_EVERY_S = 10.0

# Denial reasons (metric label values; documented in docs/OPERATIONS.md).
AUTH_FAILED = "auth_failed"
NO_CREDENTIALS = "no_credentials"
CERT_REQUIRED = "cert_required"
CERT_REVOKED = "cert_revoked"
IDENTITY_MISMATCH = "identity_mismatch"
CLIENT_ID_MISMATCH = "client_id_mismatch"
ACL_PUBLISH = "acl_publish"
ACL_SUBSCRIBE = "acl_subscribe"
ACL_RECEIVE = "acl_receive"
ACL_WILL = "acl_will"
RETAIN_DENIED = "retain_denied"
FORGED_RESPONSE = "forged_response"
TOO_MANY_DENIALS = "too_many_denials"
REVOKED = "revoked"
DENIAL_REASONS = (AUTH_FAILED, NO_CREDENTIALS, CERT_REQUIRED, CERT_REVOKED, IDENTITY_MISMATCH, CLIENT_ID_MISMATCH,
                  ACL_PUBLISH, ACL_SUBSCRIBE, ACL_RECEIVE, ACL_WILL, RETAIN_DENIED, FORGED_RESPONSE, TOO_MANY_DENIALS,
                  REVOKED)


def topic_matches(topic_filter: str, topic: str, literal_level: int | None = None) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest); ``$`` topics never match a wildcard
    in the first level. With ``literal_level`` (0-based) the filter must also spell that level
    out, not cover it with ``+`` or ``#``."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    want, got = topic_filter.split("/"), topic.split("/")
    if literal_level is not None and (literal_level >= len(want) or want[literal_level] in ("+", "#")
                                      or (literal_level > 0 and "#" in want[:literal_level])):
        return False
    for i, level in enumerate(want):
        if level == "#":
            return i == len(want) - 1
        if i >= len(got) or level not in ("+", got[i]):
            return False
    return len(want) == len(got)


def filter_covers(allowed: str, requested: str) -> bool:
    """True when every topic ``requested`` can match is also matched by ``allowed``."""
    want, got = allowed.split("/"), requested.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(got) or got[i] == "#":
            return False
        if level != "+" and level != got[i]:
            return False
    return len(want) == len(got)


def check_pattern(pattern: str) -> str:
    """Validate an ACL pattern: ``{device_id}`` fills a whole level, wildcards are whole levels."""
    levels = pattern.split("/")
    for i, level in enumerate(levels):
        if "{" in level or "}" in level:
            if level != "{device_id}":
                raise ValueError(f"{pattern!r}: '{{device_id}}' must fill a whole topic level "
                                 "(no other placeholder is known)")
        elif ("+" in level and level != "+") or ("#" in level and (level != "#" or i != len(levels) - 1)):
            raise ValueError(f"{pattern!r}: '+' and '#' must fill a whole level ('#' only the last)")
    if "{device_id}" not in levels:
        raise ValueError(f"{pattern!r}: must contain {{device_id}} (a device may only touch its own topics)")
    return pattern


@dataclass(frozen=True)
class Grants:
    """What one identity may do. ``everything`` is the gateway's internal identity."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    everything: bool = False

    def may_publish(self, topic: str) -> bool:
        return self.everything or any(topic_matches(f, topic) for f in self.publish)

    def may_subscribe(self, topic_filter: str) -> bool:
        return self.everything or any(filter_covers(f, topic_filter) for f in self.subscribe)

    def may_receive(self, topic: str) -> bool:
        return self.everything or any(topic_matches(f, topic) for f in self.subscribe)


ALL = Grants(everything=True)


@dataclass
class AclPolicy:
    """Publish and subscribe patterns with ``{device_id}``; grants are built once per identity."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    _cache: dict[str, Grants] = field(default_factory=dict, repr=False)

    def grants(self, identity: str) -> Grants:
        if identity == INTERNAL_IDENTITY:
            return ALL
        cached = self._cache.get(identity)
        if cached is None:
            def fill(patterns: Iterable[str]) -> tuple[str, ...]:
                return tuple(p.replace("{device_id}", identity) for p in patterns)

            cached = self._cache[identity] = Grants(fill(self.publish), fill(self.subscribe))
        return cached


def client_id_allowed(pattern: str, identity: str, client_id: str) -> bool:
    """``pattern`` is ``{device_id}`` (exact) or ``{device_id}`` followed by a glob such as
    ``{device_id}-*``; the identity part is literal, never a glob."""
    if identity == INTERNAL_IDENTITY:
        return True
    prefix, _, rest = pattern.partition("{device_id}")
    head = prefix + identity
    return client_id.startswith(head) and fnmatchcase(client_id[len(head):], rest)


class Denials:
    """Counts denials by reason; logs one line per (identity, reason) per ``LOG_EVERY_S``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.counts: Counter[str] = Counter()
        self._clock = clock
        self._last_log: dict[tuple[str, str], float] = {}
        self._suppressed: Counter[tuple[str, str]] = Counter()

    def deny(self, reason: str, identity: str | None, detail: str) -> None:
        self.counts[reason] += 1
        who = identity if identity is not None else "(unknown)"
        key = (who, reason)
        now = self._clock()
        last = self._last_log.get(key)
        if last is not None and now - last < LOG_EVERY_S:
            self._suppressed[key] += 1
            return
        if len(self._last_log) > 10_000:
            self._last_log.clear()
        self._last_log[key] = now
        more = self._suppressed.pop(key, 0)
        log.warning("denied %s: %s: %s%s", who[:80], reason, detail[:200],
                    f" (+{more} more since the last line)" if more else "")


def pattern_as_filter(topic_pattern: str, open_end: bool = False) -> str:
    """A topic pattern of ``[topics]`` as an ACL pattern: ``{device_id}`` stays, any other
    placeholder becomes ``+`` (``#`` when it is the last level and ``open_end``)."""
    levels = topic_pattern.split("/")
    out = []
    for i, level in enumerate(levels):
        if level.startswith("{") and level.endswith("}") and level != "{device_id}":
            out.append("#" if open_end and i == len(levels) - 1 else "+")
        else:
            out.append(level)
    return "/".join(out)
