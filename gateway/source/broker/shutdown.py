"""Stopping the embedded broker without losing a message a device was told was received.

amqtt acknowledges an incoming QoS 1 PUBLISH when it queues it, before the ingest hook sees it,
and its shutdown clears those queues and closes its listeners last. So: stop accepting
connections, stop each client's reader (no more acknowledgements), hand what amqtt already
acknowledged to the callback, and only then let amqtt shut down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from gateway.source.broker.access_broker import HANDLER_STOP_S, GatewayBroker, retained
from gateway.source.broker.failures import AMQTT_ERRORS
from gateway.source.broker.guard import Guard
from gateway.source.broker.plugins import MessageCallback

log = logging.getLogger(__package__)  # the adapter logs under its package name

_DRAIN_S = 1.0
_SHUTDOWN_S = 10.0


async def shut_down(broker: GatewayBroker, deliver: MessageCallback | None, guard: Guard | None) -> None:
    """Close the listeners, drain what amqtt acknowledged to ``deliver``, then shut amqtt down.
    Never raises what amqtt raises while shutting down (logged): the caller's shutdown goes on."""
    broker.close_listeners()
    await _drain_sessions(broker)
    for session, handler in broker.session_handlers():
        try:
            # the reader is cancelled at once; amqtt may then wait forever for it to report back
            await asyncio.wait_for(handler.stop(), HANDLER_STOP_S)
        except AMQTT_ERRORS as exc:  # the shutdown below still runs
            log.debug("stopping client handler: %r", exc)
        _hand_over_queued(session, deliver, guard)
    try:
        await asyncio.wait_for(broker.shutdown(), timeout=_SHUTDOWN_S)
    except AMQTT_ERRORS as exc:  # never mask the caller's shutdown
        log.warning("embedded broker shutdown: %s", exc)


async def _drain_sessions(broker: GatewayBroker) -> None:
    """Stop reading from every client socket (no new PUBLISH, so no new acknowledgement) and
    let amqtt's own client loops pass what is already queued to the hook, the normal way.
    Whatever is still queued after ``_DRAIN_S`` is handed over by :func:`_hand_over_queued`."""
    sessions = broker.session_handlers()
    for _session, handler in sessions:
        stream = getattr(getattr(handler, "reader", None), "_reader", None)
        transport = getattr(stream, "_transport", None)
        if transport is not None:
            with contextlib.suppress(OSError, RuntimeError):  # the socket may already be gone
                transport.pause_reading()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _DRAIN_S
    quiet = 0
    while quiet < 3 and loop.time() < deadline:  # empty three polls in a row: the loops caught up
        busy = any(getattr(s, "delivered_message_queue", None) is not None and not s.delivered_message_queue.empty()
                   for s, _ in sessions)
        quiet = 0 if busy else quiet + 1
        await asyncio.sleep(0.005)


def _hand_over_queued(session: Any, deliver: MessageCallback | None, guard: Guard | None) -> None:
    queue = getattr(session, "delivered_message_queue", None)
    while queue is not None and not queue.empty():
        message = queue.get_nowait()
        if deliver is not None and message is not None and message.topic and (
                guard is None or guard.may_publish(session, str(message.topic), retained(message))):
            deliver(str(message.topic), bytes(message.data or b""))
