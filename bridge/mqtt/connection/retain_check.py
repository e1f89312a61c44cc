"""Handing incoming messages to the consumer, with the retain check of MQTT 3.1.1 (see the
package's docstring): a message on a checked topic waits until a SUBSCRIBE/UNSUBSCRIBE of its exact
topic has shown whether the broker holds it as retained."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from bridge.mqtt.errors import BridgeError
from bridge.mqtt.types import ClientSettings, Message, MessageHandler

log = logging.getLogger(__package__)  # the adapter logs under its package name


class RetainCheck:
    """Delivers messages to ``on_message`` on the loop; a consumer's exception is logged and
    counted in :attr:`callback_errors`, never stops the following messages."""

    def __init__(
        self, settings: ClientSettings, loop: asyncio.AbstractEventLoop, on_message: MessageHandler | None, *,
        subscribe: Callable[[list[tuple[str, int]]], Awaitable[list[int]]],
        unsubscribe: Callable[[list[str]], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.callback_errors = 0
        self._loop = loop
        self._on_message = on_message
        self._subscribe = subscribe
        self._unsubscribe = unsubscribe
        self._checking: set[tuple[str, bytes]] = set()  # messages waiting for their retain check
        self._checks: set[asyncio.Task[None]] = set()

    def deliver(self, message: Message) -> None:
        if self._on_message is None:
            return
        if self._needs_check(message):
            key = (message.topic, message.payload)
            if key in self._checking:
                return  # the same message again, through the check's own subscription
            self._checking.add(key)
            task = self._loop.create_task(self._deliver_checked(message, key))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)
            return
        self._hand_on(message)

    def _needs_check(self, message: Message) -> bool:
        return (not message.retain and bool(message.payload) and self.settings.protocol != "5"
                and message.topic.startswith(self.settings.retain_check_prefixes))

    async def _deliver_checked(self, message: Message, key: tuple[str, bytes]) -> None:
        try:
            await self._subscribe([(message.topic, 0)])  # the broker sends its retained copy, flagged
            await self._unsubscribe([message.topic])  # ... before this is acknowledged
        except BridgeError as exc:
            log.warning("retain check of a message on %s failed (%s): handed on as retained", message.topic, exc)
            message = replace(message, retain=True)
        finally:
            self._checking.discard(key)
        self._hand_on(message)

    def _hand_on(self, message: Message) -> None:
        assert self._on_message is not None
        try:
            self._on_message(message)
        except Exception:  # a consumer bug must not break delivery of the following messages
            self.callback_errors += 1
            log.exception("on_message callback failed for topic %r", message.topic)
