"""How each simulated device proves who it is: a username and password, a client certificate, or both.

Every value is a template in which ``{device_id}`` is replaced by the device's id (nothing else in it
is special), so one option covers a whole fleet: ``--password 'secret-{device_id}'``,
``--cert 'certs/{device_id}.crt'``. A password file gives each device its own password instead:
plaintext lines ``device_id:password``, ``#`` starts a comment line. When a device has a password
but no username is given, its username is its device id (the convention of brokers that bind a
device's topics to its username, such as the gateway's broker or mosquitto's ``pattern ... %u``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from device_sim.errors import SimConfigError
from device_sim.topics import is_valid_device_id

DEVICE_ID = "{device_id}"
_HASHED = re.compile(r"\$\d+\$")  # mosquitto_passwd / crypt(3) hashes: $6$..., $7$...
_SHOWN_MISSING = 5


@dataclass(frozen=True)
class DeviceAuth:
    """The credentials of one connection."""

    username: str | None = None
    password: str | None = None
    certfile: str | None = None
    keyfile: str | None = None


@dataclass(frozen=True)
class Credentials:
    """Templates (``{device_id}``) and a password file's entries; see the module doc."""

    username: str | None = None
    password: str | None = None
    passwords: Mapping[str, str] | None = None  # device id -> password, from a password file
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.password is not None and self.passwords is not None:
            raise SimConfigError("use either --password or --password-file, not both", "--password-file")
        if self.key is not None and self.cert is None:
            raise SimConfigError("--key needs --cert", "--key")

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.username, self.password, self.passwords, self.cert))

    @property
    def per_device(self) -> bool:
        """True when devices do not all authenticate alike (so one shared connection cannot)."""
        templates = (self.username, self.password, self.cert, self.key)
        defaulted_user = self.username is None and self.password is not None
        return self.passwords is not None or defaulted_user or any(DEVICE_ID in (t or "") for t in templates)

    def for_device(self, device_id: str) -> DeviceAuth:
        password = _fill(self.password, device_id)
        if self.passwords is not None:
            password = self.passwords.get(device_id)
            if password is None:
                raise SimConfigError(f"the password file has no line for device {device_id!r}", "--password-file")
        username = _fill(self.username, device_id)
        if username is None and password is not None:
            username = device_id
        return DeviceAuth(username, password, _fill(self.cert, device_id), _fill(self.key, device_id))

    def check(self, device_ids: Iterable[str]) -> None:
        """Fail now, naming the option, if a device would lack a password or certificate file."""
        ids = list(device_ids)
        if self.passwords is not None:
            _none_missing([d for d in ids if d not in self.passwords], "--password-file",
                          "the password file has no line for device")
        for option, template in (("--cert", self.cert), ("--key", self.key)):
            if template is not None:
                paths = {_fill(template, d) or "" for d in ids}
                _none_missing(sorted(p for p in paths if not Path(p).is_file()), option, "no such file:")


def _fill(template: str | None, device_id: str) -> str | None:
    return None if template is None else template.replace(DEVICE_ID, device_id)


def _none_missing(missing: list[str], option: str, what: str) -> None:
    if missing:
        shown = ", ".join(repr(m) for m in missing[:_SHOWN_MISSING])
        more = f" and {len(missing) - _SHOWN_MISSING} more" if len(missing) > _SHOWN_MISSING else ""
        raise SimConfigError(f"{what} {shown}{more}", option)


def load_password_file(path: Path) -> dict[str, str]:
    """Read ``device_id:password`` lines (``#`` comments and blank lines skipped)."""
    option = "--password-file"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SimConfigError(f"cannot read {path}: {exc}", option) from exc
    passwords: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        device_id, sep, password = line.partition(":")
        where = f"{path}, line {number}"
        if not sep or not password:
            raise SimConfigError(f"{where}: expected device_id:password", option)
        if not is_valid_device_id(device_id):
            raise SimConfigError(f"{where}: {device_id!r} is not a valid device id", option)
        if device_id in passwords:
            raise SimConfigError(f"{where}: device {device_id!r} is listed twice", option)
        if _HASHED.match(password):
            raise SimConfigError(f"{where}: this looks like a hashed password (a broker's password file); "
                                 "device-sim needs the plaintext passwords", option)
        passwords[device_id] = password
    return passwords
