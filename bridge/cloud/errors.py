"""What the cloud-side tools raise (beyond the MQTT adapter's errors)."""

from __future__ import annotations

from bridge.protocol.errors import PermanentBridgeError


class StoreUnavailable(PermanentBridgeError):
    """The sink database cannot be opened or created (missing directory, no permission)."""


class PlotUnavailable(PermanentBridgeError):
    """A timeline PNG was asked for but matplotlib (the ``plot`` extra) is not installed."""
