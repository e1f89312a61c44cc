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
