"""The gateway's exception tree.

Everything the gateway raises on purpose derives from :class:`GatewayError`. Transient errors
(a broker that is down, a full disk) may succeed when retried; permanent ones (bad config, a bad
message) will not. Only the CLI turns these into exit codes.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class PermanentError(GatewayError):
    """Retrying will not help."""


class TransientError(GatewayError):
    """May succeed later (broker down, disk temporarily full)."""


class ConfigError(PermanentError):
    """A configuration file (or pushed config) is invalid.

    ``problems`` holds one ``(key, reason)`` pair per invalid key, with dotted key paths.
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {key}: {reason}" for key, reason in problems]
        super().__init__("\n".join(lines) if lines else f"{source}: invalid configuration")


class BrokerError(TransientError):
    """The local broker could not be started, reached or used."""


class AddressInUse(TransientError):
    """A listening address (the local broker's, or the metrics endpoint's) is taken by another process.
    ``setting`` names the config key that chooses the address."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class MetricsError(TransientError):
    """The metrics endpoint could not be started (address not available, unreadable TLS files)."""


class StorageError(TransientError):
    """The durable buffer could not be written or read (disk full, I/O error). The forwarder, on the
    bridge's side of the RecordStore port, sees it as :class:`bridge.uplink.store.StoreError`."""


class CredentialsError(PermanentError):
    """A password file, certificate or revocation list is unreadable or malformed."""
