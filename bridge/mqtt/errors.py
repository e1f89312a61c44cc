"""What the MQTT adapter raises; every class derives from the bridge's roots in
:mod:`bridge.protocol.errors`, re-exported here for the adapter's callers."""

from __future__ import annotations

from bridge.protocol.errors import BridgeError, PermanentBridgeError, TransientBridgeError

__all__ = [
    "BridgeError", "BrokerUnreachable", "ConnectFailed", "ConnectRefused", "ConnectionLost", "InvalidUrl",
    "PermanentBridgeError", "PublishRejected", "SubscribeFailed", "TransientBridgeError", "UplinkBusy",
    "UplinkStopped",
]


class InvalidUrl(PermanentBridgeError):
    """A broker URL could not be parsed or uses an unsupported form."""


class ConnectFailed(TransientBridgeError):
    """No session could be established: TCP/TLS failure, timeout, or a transient CONNACK refusal
    (server unavailable or busy, quota or rate exceeded)."""

    def __init__(self, message: str, *, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class ConnectRefused(PermanentBridgeError):
    """The broker answered CONNACK with a refusal that needs a config change (bad credentials, not
    authorized, unsupported protocol version, client id rejected, banned).

    ``reason_code`` is the MQTT 5 reason code (MQTT 3.1.1 return codes are mapped onto it) and
    ``reason`` its text.
    """

    def __init__(self, message: str, *, reason_code: int, reason: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.reason = reason


class BrokerUnreachable(TransientBridgeError):
    """No broker accepted a connection within the time a command allows for starting."""


class ConnectionLost(TransientBridgeError):
    """The session is gone; pending publishes fail with this and may be retried on a new one."""


class UplinkBusy(TransientBridgeError):
    """The client's own bounded queue is full: wait for acknowledgements before publishing more."""


class PublishRejected(PermanentBridgeError):
    """An MQTT 5 PUBACK/PUBCOMP carried a failure reason code (e.g. 0x87 not authorized)."""

    def __init__(self, topic: str, reason_code: int, reason: str) -> None:
        super().__init__(f"publish to {topic!r} rejected by broker: {reason} (0x{reason_code:02X})")
        self.topic = topic
        self.reason_code = reason_code
        self.reason = reason

    @property
    def permanent(self) -> bool:
        """Retrying will not fix it (not authorized, bad topic, packet too large, bad payload format);
        otherwise the broker asks to retry later (e.g. quota exceeded)."""
        return self.reason_code in PERMANENT_PUBACK_CODES


# PUBACK reason codes that retrying will not fix.
PERMANENT_PUBACK_CODES = frozenset({0x87, 0x90, 0x95, 0x99})


class SubscribeFailed(PermanentBridgeError):
    """A SUBACK refused at least one filter. ``results`` holds the code returned per filter."""

    def __init__(self, message: str, results: list[int]) -> None:
        super().__init__(message)
        self.results = results


class UplinkStopped(BridgeError):
    """A connect loop was asked to stop (its ``stop`` event was set) before it connected."""
