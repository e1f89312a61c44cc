"""Connecting with retries: try every broker URL in turn with decorrelated-jitter backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from bridge.mqtt.backoff import DecorrelatedJitter
from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.errors import BridgeError, ConnectRefused, TransientBridgeError, UplinkStopped
from bridge.mqtt.types import AttemptFailedHandler, ClientSettings, MessageHandler
from bridge.mqtt.urls import BrokerUrl, parse_broker_url

log = logging.getLogger(__name__)
T = TypeVar("T")


async def connect_with_backoff(
    urls: Sequence[BrokerUrl | str],
    settings: ClientSettings,
    backoff: DecorrelatedJitter,
    *,
    on_message: MessageHandler | None = None,
    on_attempt_failed: AttemptFailedHandler | None = None,
    stop: asyncio.Event | None = None,
    reset_backoff: bool = True,
) -> MqttConnection:
    """Connect to the first broker that accepts, trying ``urls`` round robin until one does.

    After each failed attempt ``on_attempt_failed(url, error, delay)`` is called and the loop sleeps
    ``backoff.next_delay()`` seconds. Refusals (:class:`ConnectRefused`) are retried too: the
    server side may get fixed. Setting ``stop`` ends the loop (also mid-attempt) with
    :class:`UplinkStopped`. The backoff is reset on success unless ``reset_backoff`` is false (a
caller that resets it only once a session proved stable). Malformed URLs raise at once.
    """
    brokers = [u if isinstance(u, BrokerUrl) else parse_broker_url(u) for u in urls]
    if not brokers:
        raise ValueError("connect_with_backoff() needs at least one broker url")
    attempt = 0
    while True:
        if stop is not None and stop.is_set():
            raise UplinkStopped("stopped before connecting")
        url = brokers[attempt % len(brokers)]
        attempt += 1
        try:
            conn = await _until_stopped(MqttConnection.open(url, settings, on_message=on_message), stop)
        except (TransientBridgeError, ConnectRefused) as err:
            delay = backoff.next_delay()
            log.info("connect to %s failed (%s); next attempt in %.1f s", url, err, delay)
            if on_attempt_failed is not None:
                on_attempt_failed(url, err, delay)
            await _until_stopped(asyncio.sleep(delay), stop)
        else:
            if reset_backoff:
                backoff.reset()
            return conn


async def _until_stopped(aw: Awaitable[T], stop: asyncio.Event | None) -> T:
    """Await ``aw``; if ``stop`` is set first, cancel it and raise :class:`UplinkStopped`."""
    if stop is None:
        return await aw
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, BridgeError):
                await task
        elif not task.cancelled():
            task.exception()  # retrieved even when this coroutine is being cancelled
    if not task.cancelled():
        return task.result()
    raise UplinkStopped("stopped before connecting")

