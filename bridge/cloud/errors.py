"""What the cloud-side tools raise (beyond the MQTT adapter's errors)."""

from __future__ import annotations

from bridge.protocol.errors import PermanentBridgeError, TransientBridgeError


class StoreUnavailable(PermanentBridgeError):
    """The sink database cannot be opened or created (missing directory, no permission)."""


class SinkStoreError(TransientBridgeError):
    """The sink database refused a read or a write (disk full, I/O error, locked, read-only): what
    SQLite raised, in the bridge's tree. The sink leaves the message unacknowledged and reconnects."""


class PlotUnavailable(PermanentBridgeError):
    """A timeline PNG was asked for but matplotlib (the ``plot`` extra) is not installed."""
