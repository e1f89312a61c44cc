"""Device password file: ``device_id:$7$iterations$salt$hash`` lines, as ``mosquitto_passwd`` writes.

``$7$`` is PBKDF2-HMAC-SHA512 with a 12-byte salt and a 64-byte key, both base64 (standard
alphabet, padded). The same file therefore works for the embedded broker and for an external
mosquitto (``password_file``). Lines starting with ``#`` and blank lines are ignored; any other
line that is not ``id:$7$...`` with a valid device id makes the whole file invalid (an error naming
the line), so a typo never silently locks a device out or lets one in.

:class:`PasswordVerifier` checks a presented password off the event loop (the hash is slow on
purpose) and remembers successful checks, keyed by a keyed BLAKE2 digest of the password, so a
device that reconnects is not hashed again until the file changes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bridge.protocol.topics import ID_RULE, valid_id
from gateway.atomic_file import atomic_write
from gateway.errors import CredentialsError

PBKDF2_TAG = "7"
DEFAULT_ITERATIONS = 10_000  # a password someone typed: the slow hash protects it if the file leaks
GENERATED_ITERATIONS = 1_000  # a generated 128-bit password needs no stretching; connects stay cheap
_SALT_BYTES = 12
_KEY_BYTES = 64


@dataclass(frozen=True)
class PasswordHash:
    iterations: int
    salt: bytes
    key: bytes

    def encode(self) -> str:
        b64 = base64.b64encode
        return f"${PBKDF2_TAG}${self.iterations}${b64(self.salt).decode()}${b64(self.key).decode()}"

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        parts = text.split("$")
        if len(parts) != 5 or parts[0] != "" or parts[1] != PBKDF2_TAG:
            raise ValueError("not a $7$ (PBKDF2-SHA512) hash; create it with 'edge-gateway devices add' "
                             "or mosquitto_passwd")
        try:
            iterations = int(parts[2])
            salt = base64.b64decode(parts[3], validate=True)
            key = base64.b64decode(parts[4], validate=True)
        except (ValueError, binascii.Error) as exc:
            raise ValueError(f"malformed $7$ hash: {exc}") from exc
        if iterations < 1 or not salt or len(key) != _KEY_BYTES:
            raise ValueError("malformed $7$ hash: bad iteration count, salt or key length")
        return cls(iterations, salt, key)

    def matches(self, password: str) -> bool:
        derived = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), self.salt, self.iterations, _KEY_BYTES)
        return hmac.compare_digest(derived, self.key)


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS) -> str:
    salt = os.urandom(_SALT_BYTES)
    key = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, _KEY_BYTES)
    return PasswordHash(iterations, salt, key).encode()


def generate_password() -> str:
    """A random password with 128 bits of entropy, safe in shells and config files."""
    return secrets.token_urlsafe(16)


def parse_password_file(text: str, source: str) -> dict[str, str]:
    """``{device_id: encoded hash}``. Raises :class:`CredentialsError` naming the first bad line."""
    entries: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        device, sep, encoded = line.partition(":")
        if not sep or not valid_id(device):
            raise CredentialsError(f"{source}:{number}: expected DEVICE_ID:$7$..., with a device id "
                                   "of 1-64 characters [A-Za-z0-9_.-]")
        try:
            PasswordHash.parse(encoded)
        except ValueError as exc:
            raise CredentialsError(f"{source}:{number}: {exc}") from exc
        if device in entries:
            raise CredentialsError(f"{source}:{number}: device {device!r} appears twice")
        entries[device] = encoded
    return entries


def read_password_file(path: Path) -> dict[str, str]:
    """The entries of ``path``; a missing file is an empty set (no device may connect yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"{path}: cannot read: {exc}") from exc
    return parse_password_file(text, str(path))


def write_password_file(path: Path, entries: dict[str, str]) -> None:
    """Replace ``path`` atomically (owner read/write only), entries sorted by device id."""
    body = "".join(f"{device}:{encoded}\n" for device, encoded in sorted(entries.items()))
    atomic_write(path, body.encode(), mode=0o600)


_POOL: ThreadPoolExecutor | None = None


def _hash_pool() -> ThreadPoolExecutor:
    """Half the cores (at least one) hash; the rest stay free for the event loop during a storm of
    first connects (hashlib releases the GIL, so more workers would starve the loop of CPU)."""
    global _POOL  # noqa: PLW0603 - one pool per process, made on first use
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max(1, (os.cpu_count() or 2) // 2), thread_name_prefix="password-hash")
    return _POOL


class PasswordVerifier:
    """Checks ``(device, password)`` against the current entries; slow hashes run in a thread."""

    def __init__(self, entries: dict[str, str] | None = None) -> None:
        self._entries: dict[str, str] = dict(entries or {})
        self._cache_key = os.urandom(32)
        self._verified: dict[tuple[str, bytes], str] = {}
        self.hashes_computed = 0
        self.cache_hits = 0

    def replace(self, entries: dict[str, str]) -> None:
        self._entries = dict(entries)
        self._verified = {k: v for k, v in self._verified.items() if entries.get(k[0]) == v}

    def __contains__(self, device: object) -> bool:
        return device in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def devices(self) -> frozenset[str]:
        return frozenset(self._entries)

    def _digest(self, password: str) -> bytes:
        return hashlib.blake2b(password.encode("utf-8"), key=self._cache_key, digest_size=32).digest()

    async def verify(self, device: str, password: str) -> bool:
        encoded = self._entries.get(device)
        if encoded is None:
            return False
        cache_key = (device, self._digest(password))
        if self._verified.get(cache_key) == encoded:
            self.cache_hits += 1
            return True
        self.hashes_computed += 1
        ok = await asyncio.get_running_loop().run_in_executor(_hash_pool(), PasswordHash.parse(encoded).matches,
                                                              password)
        if ok and self._entries.get(device) == encoded:  # the file may have changed meanwhile
            self._verified[cache_key] = encoded
        return ok


def provision(password_file: Path, credentials_file: Path, device_ids: list[str],
              iterations: int = GENERATED_ITERATIONS) -> dict[str, str]:
    """Give each of ``device_ids`` a random password: their hashes go into ``password_file`` (for
    the broker; other entries are kept) and the plain ``id:password`` lines into
    ``credentials_file`` (owner-only; what ``device-sim run --password-file`` reads). Returns
    ``{id: password}``."""
    for device in device_ids:
        if not valid_id(device):
            raise CredentialsError(f"{device[:64]!r} is not a valid device id ({ID_RULE})")
    passwords = {device: generate_password() for device in device_ids}
    entries = read_password_file(password_file)
    entries.update({device: hash_password(pw, iterations) for device, pw in passwords.items()})
    write_password_file(password_file, entries)
    atomic_write(credentials_file, "".join(f"{d}:{pw}\n" for d, pw in passwords.items()).encode(), mode=0o600)
    return passwords
