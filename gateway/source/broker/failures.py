"""amqtt's failures: what it raises, its log noise, and the OSError behind a listener that could
not be opened."""

from __future__ import annotations

import asyncio
import errno
import logging

from amqtt.errors import AMQTTError, MQTTError, NoDataError, PluginError, ProtocolHandlerError
from amqtt.errors import BrokerError as AmqttBrokerError

log = logging.getLogger(__package__)  # the adapter logs under its package name

AMQTT_ERRORS: tuple[type[Exception], ...] = (
    AMQTTError, AmqttBrokerError, MQTTError, NoDataError, PluginError, ProtocolHandlerError,
    OSError, RuntimeError, LookupError, ValueError, asyncio.QueueEmpty)
"""What amqtt raises from building, starting, stopping or publishing (its own errors and those of
the sockets and state it manages); the adapter turns them into :class:`gateway.errors.BrokerError`
or logs them where shutting down must go on."""


def os_error(exc: BaseException | None) -> OSError | None:
    """The OSError among ``exc`` and its causes (amqtt wraps the one a listener raised), if any."""
    while exc is not None:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def address_in_use(exc: BaseException | None) -> bool:
    err = os_error(exc)
    return err is not None and err.errno == errno.EADDRINUSE


class QuietFilter(logging.Filter):
    """Drops amqtt records that are not errors of the gateway, from places amqtt offers no hook for:

    - the ERROR and WARNING for a connection closed before it sent anything (a TCP health probe, a
      port scan); the gateway logs those at DEBUG instead;
    - the traceback of a listener that could not be opened (port taken, address not on this host):
      :meth:`EmbeddedBroker.start` raises it as one :class:`BrokerError` the CLI prints in one line.
    """

    _NO_DATA = "No data to decode MQTT packet fixed header"

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self._NO_DATA in message:
            if message.startswith("No data from"):
                log.debug("connection closed before CONNECT: %s", message)
            return False
        return not (message == "Broker startup failed" and record.exc_info is not None
                    and os_error(record.exc_info[1]) is not None)


_QUIET_FILTER = QuietFilter()


def quiet_amqtt_logs() -> None:
    """Install the filter on amqtt's broker logger (once)."""
    amqtt_log = logging.getLogger("amqtt.broker")
    if _QUIET_FILTER not in amqtt_log.filters:
        amqtt_log.addFilter(_QUIET_FILTER)
