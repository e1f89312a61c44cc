"""What the cloud-side tools raise (beyond the MQTT adapter's errors)."""

from __future__ import annotations

from bridge.protocol.errors import PermanentBridgeError, TransientBridgeError


class StoreUnavailable(PermanentBridgeError):
    """The sink database cannot be opened or created (missing directory, no permission)."""


class StoreUnreachable(StoreUnavailable):
    """The database server could not be reached or turned the connection away for now (nothing
    listening, too many connections, starting up): the one kind of :class:`StoreUnavailable` that
    retrying may cure, so ``edge-gateway sink`` exits 1 for it (a service manager restarts it), not 2."""


class SinkStoreError(TransientBridgeError):
    """The sink database refused a read or a write (disk full, I/O error, locked, read-only): what
    SQLite raised, in the bridge's tree. The sink leaves the message unacknowledged and reconnects."""


class PlotUnavailable(PermanentBridgeError):
    """A timeline PNG was asked for but matplotlib (the ``plot`` extra) is not installed."""
