"""The bridge package's exception tree.

Everything the bridge raises on purpose derives from :class:`BridgeError`. A
:class:`TransientBridgeError` may succeed when retried (the broker is down, the link dropped, the
client's queue is full); a :class:`PermanentBridgeError` will not without a change somewhere (a bad
URL, refused credentials, a PUBACK carrying a failure reason code). Only the CLIs turn these into
exit codes.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class TransientBridgeError(BridgeError):
    """Retrying may help (network trouble, broker busy or restarting)."""


class PermanentBridgeError(BridgeError):
    """Retrying the same thing will not help."""


class CodecError(PermanentBridgeError):
    """A payload could not be encoded or decoded."""


class InvalidRecord(PermanentBridgeError):
    """A decoded message is not a valid record (missing field, wrong type, non-finite value).

    ``reason`` is a short, low-cardinality key for counters; the message has the details.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
