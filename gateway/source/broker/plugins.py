"""The amqtt plugins of the embedded broker: the ingest hook and the access plugin.

amqtt builds plugins itself from their dotted paths (:data:`HOOK_PATH`, :data:`ACCESS_PATH`) and
the ``plugins`` section of its config; what a plugin calls is given to it there, in its ``Config``
(:func:`plugin_config`), so it has it from construction on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BasePlugin, BaseTopicPlugin

from gateway.source.broker.guard import Guard

log = logging.getLogger(__package__)  # the adapter logs under its package name

MessageCallback = Callable[[str, bytes], None]
PresenceCallback = Callable[[], None]

HOOK_PATH = "gateway.source.broker.plugins.IngestHook"
ACCESS_PATH = "gateway.source.broker.plugins.AccessPlugin"
AUTH_PATH = "amqtt.plugins.authentication.AnonymousAuthPlugin"


class IngestHook(BasePlugin[Any]):  # type: ignore[misc]  # amqtt ships no type hints
    """amqtt plugin that tells ``presence`` when a client connects or subscribes (so held commands
    can be delivered at once). Accepted PUBLISHes reach the gateway without a plugin event:
    :meth:`GatewayBroker._broadcast_message` hands them over."""

    @dataclass
    class Config:
        presence: Any = None  # PresenceCallback (amqtt checks the Config's types: Any passes a callable)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.presence: PresenceCallback | None = self.config.presence
        self.errors = 0

    def _guarded(self, what: str, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except Exception:  # hooks run as unobserved tasks: log and count, never lose silently
            self.errors += 1
            log.exception("%s failed (topic %r)", what, getattr(args[-1], "topic", None) if args else None)

    def _presence_changed(self) -> None:
        presence = self.presence
        if presence is not None:
            self._guarded("presence callback", presence)

    async def on_broker_client_connected(self, *, client_id: str, **_: Any) -> None:
        self._presence_changed()

    async def on_broker_client_subscribed(self, *, client_id: str, topic: str, **_: Any) -> None:
        self._presence_changed()


class AccessPlugin(BaseAuthPlugin, BaseTopicPlugin):  # type: ignore[misc]  # amqtt ships no type hints
    """amqtt's ``authenticate`` and ``topic_filtering`` hooks, answered by the :class:`Guard`.
    The CONNECT itself was already checked before amqtt touched any existing session
    (:meth:`GatewayBroker._initialize_client_session`)."""

    @dataclass
    class Config:
        guard: Any = None  # Guard

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.guard: Guard | None = self.config.guard

    async def authenticate(self, *, session: Any) -> bool:
        return self.guard is not None and self.guard.identity(session) is not None

    async def topic_filtering(self, *, session: Any = None, topic: str | None = None,
                              action: Any = None) -> bool:
        guard = self.guard
        if guard is None or session is None or topic is None:
            return False
        if action == Action.PUBLISH:
            return True  # checked with the retain flag in GatewayBroker._handle_message_delivery
        if action == Action.SUBSCRIBE:
            return guard.may_subscribe(session, topic)
        return guard.may_receive(session, topic)


def plugin_config(presence: PresenceCallback, guard: Guard | None) -> dict[str, Any]:
    """amqtt's ``plugins`` section: the presence hook, and the access plugin with a guard (anonymous
    access without one). No default loggers, no $SYS."""
    auth: dict[str, Any] = {ACCESS_PATH: {"guard": guard}} if guard is not None else {
        AUTH_PATH: {"allow_anonymous": True}}
    return {**auth, HOOK_PATH: {"presence": presence}}
