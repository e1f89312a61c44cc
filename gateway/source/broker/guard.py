"""Per-connection identities and the ACL checks of the embedded broker, on top of a
:class:`~gateway.source.identity.Gatekeeper`. Counts every denial in :class:`Denials`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.source.access import (
    ACL_PUBLISH,
    ACL_RECEIVE,
    ACL_SUBSCRIBE,
    INTERNAL_IDENTITY,
    RETAIN_DENIED,
    REVOKED,
    TOO_MANY_DENIALS,
    Denials,
)
from gateway.source.identity import Gatekeeper

_CLIENT_ATTR = "_edge_gateway_client"


@dataclass
class Client:
    """Who a connection logged in as (kept on amqtt's session)."""

    identity: str
    serial: str | None
    handler: Any
    denied: int = 0


class Guard:
    """Per-connection identities and the ACL checks, on top of a :class:`Gatekeeper`."""

    def __init__(self, gate: Gatekeeper, denials: Denials, max_denied_publishes: int) -> None:
        self.gate = gate
        self.denials = denials
        self.max_denied = max_denied_publishes
        self.admitted = 0
        self._kicks: set[asyncio.Future[Any]] = set()

    @staticmethod
    def client(session: Any) -> Client | None:
        """The identity admitted for a session (amqtt's Session is unhashable: kept on it)."""
        return getattr(session, _CLIENT_ATTR, None)

    @staticmethod
    def admit(session: Any, client: Client) -> None:
        setattr(session, _CLIENT_ATTR, client)

    def identity(self, session: Any) -> str | None:
        client = self.client(session)
        return client.identity if client else None

    def may_publish(self, session: Any, topic: str, retain: bool) -> bool:
        client = self.client(session)
        if client is None:
            return False
        if retain and client.identity != INTERNAL_IDENTITY:
            self._denied_publish(session, client, RETAIN_DENIED, f"retained publish to {topic[:120]!r}")
            return False
        if self.gate.policy.grants(client.identity).may_publish(topic):
            return True
        self._denied_publish(session, client, ACL_PUBLISH, f"publish to {topic[:120]!r}")
        return False

    def _denied_publish(self, session: Any, client: Client, reason: str, detail: str) -> None:
        self.denials.deny(reason, client.identity, detail)
        client.denied += 1
        if self.max_denied and client.denied == self.max_denied:
            self.denials.deny(TOO_MANY_DENIALS, client.identity,
                              f"disconnected after {client.denied} denied publishes")
            self.kick(session, client)

    def may_subscribe(self, session: Any, topic_filter: str) -> bool:
        who = self.identity(session)
        if who is not None and self.gate.policy.grants(who).may_subscribe(topic_filter):
            return True
        self.denials.deny(ACL_SUBSCRIBE, who, f"subscribe to {topic_filter[:120]!r}")
        return False

    def may_receive(self, session: Any, topic: str) -> bool:
        who = self.identity(session)
        if who is not None and self.gate.policy.grants(who).may_receive(topic):
            return True
        self.denials.deny(ACL_RECEIVE, who, f"delivery of {topic[:120]!r}")
        return False

    def kick(self, session: Any, client: Client) -> None:
        """Close a connection now (no will message: the device is being thrown out)."""
        session.will_flag = False
        task = asyncio.ensure_future(client.handler.handle_connection_closed())
        self._kicks.add(task)
        task.add_done_callback(self._kicks.discard)

    def disconnect(self, sessions: Iterable[Any], identities: Iterable[str] = (),
                   serials: Iterable[str] = ()) -> int:
        who, revoked = set(identities), set(serials)
        kicked = 0
        for session in sessions:
            client = self.client(session)
            if client is not None and session.transitions.state == "connected" and (
                    client.identity in who or (client.serial is not None and client.serial in revoked)):
                self.denials.deny(REVOKED, client.identity, "credentials removed or certificate revoked")
                self.kick(session, client)
                kicked += 1
        return kicked
