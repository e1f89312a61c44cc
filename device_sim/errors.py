"""The device simulator's exceptions: one base, split by who is at fault.

Only the CLI turns these into exit codes: :class:`SimConfigError` means the user asked for something
invalid (exit 2), :class:`SimConnectError` means the broker could not be reached (exit 1).
"""

from __future__ import annotations


class SimError(Exception):
    """Base class of every error raised by the device simulator."""


class SimConfigError(SimError):
    """An invalid option, profile, template or input file (a permanent, user-side error).
    ``option`` names the command-line option at fault, when there is one."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class SimConnectError(SimError):
    """The broker could not be reached or refused the connection."""


class CommandError(SimError):
    """A command payload that cannot be acted on. ``command_id`` is set when the id could be read."""

    def __init__(self, reason: str, command_id: str | int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.command_id = command_id
