"""Helpers for the access-control tests (their clients, devices and attackers alike, are
:class:`tests.support.RecordingClient`)."""

from __future__ import annotations

from pathlib import Path

from gateway.source.passwords import hash_password, write_password_file


def write_passwords(path: Path, passwords: dict[str, str]) -> Path:
    write_password_file(path, {device: hash_password(pw, iterations=1000) for device, pw in passwords.items()})
    return path
