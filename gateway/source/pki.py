"""The gateway's small certificate authority: a CA, the broker's server certificate, one client
certificate per device, and the list of revoked serials.

Layout of the PKI directory (``local_broker.auth.pki_dir``, default ``{data_dir}/pki``)::

    ca.pem ca.key                  the CA (created on first use; the key never leaves this directory)
    server.pem server.key          the TLS listener's certificate
    devices/ID.pem devices/ID.key  a device's certificate (CN = device id) and key
    issued.txt                     SERIAL DEVICE_ID per issued device certificate
    revoked.txt                    SERIAL DEVICE_ID per revoked certificate (read by the broker)

Issuing needs ``cryptography`` (the optional extra ``certs``); it is imported only here and only when
a certificate is made. Reading the revoked list needs nothing. Keys are EC P-256.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.protocol.topics import ID_RULE, valid_id
from gateway.atomic_file import atomic_write
from gateway.errors import CredentialsError
from gateway.source.identity import normalise_serial

CA_DAYS = 3650
SERVER_DAYS = 825
DEVICE_DAYS = 825


def _crypto() -> Any:
    try:
        import cryptography  # noqa: F401
    except ImportError as exc:
        raise CredentialsError("issuing certificates needs the 'cryptography' package: "
                               "pip install 'edge-mqtt-gateway[certs]'") from exc
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    return x509, hashes, serialization, ec, NameOID, ExtendedKeyUsageOID


@contextlib.contextmanager
def _failures(what: str, directory: Path) -> Iterator[None]:
    """What ``cryptography`` and the files raise while making ``what`` becomes a :class:`CredentialsError`
    (a corrupt or encrypted CA key, a name that is not a DNS name, an unwritable directory)."""
    _crypto()  # CredentialsError if cryptography is missing
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        yield
    except (ValueError, TypeError, OSError, UnsupportedAlgorithm) as exc:
        raise CredentialsError(f"cannot make {what} in {directory}: {exc}") from exc


@dataclass(frozen=True)
class Issued:
    cert_file: Path
    key_file: Path
    serial: str


class Pki:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def revoked_file(self) -> Path:
        return self.dir / "revoked.txt"

    @property
    def issued_file(self) -> Path:
        return self.dir / "issued.txt"

    # ------------------------------------------------------------------ issuing

    def ensure_ca(self, name: str = "edge-gateway device CA") -> Path:
        """Create the CA if there is none yet; return the CA certificate's path."""
        if self.ca_file.exists():
            return self.ca_file
        with _failures("the CA", self.dir):
            self._make_ca(name)
        return self.ca_file

    def _make_ca(self, name: str) -> None:
        x509, hashes, _serialization, ec, name_oid, _eku = _crypto()
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(name_oid.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        self._write_pair(self.ca_file, self.dir / "ca.key", cert, key)

    def ensure_server_cert(self, names: Iterable[str] = ()) -> Issued:
        """The broker's TLS certificate for ``names`` (DNS names or IP addresses; default: this
        host's name, localhost and 127.0.0.1). Kept if it already exists."""
        if self.server_cert.exists() and self.server_key.exists():
            return Issued(self.server_cert, self.server_key, "")
        wanted = list(names) or [socket.gethostname(), "localhost", "127.0.0.1"]
        return self._issue(wanted[0], wanted, self.server_cert, self.server_key, server=True, days=SERVER_DAYS)

    def issue_device(self, device_id: str, days: int = DEVICE_DAYS, now: dt.datetime | None = None) -> Issued:
        """A client certificate with CN = ``device_id``, signed by the CA (created if missing)."""
        if not valid_id(device_id):
            raise CredentialsError(f"{device_id[:64]!r} is not a valid device id ({ID_RULE})")
        devices = self.dir / "devices"
        issued = self._issue(device_id, [device_id], devices / f"{device_id}.pem", devices / f"{device_id}.key",
                             server=False, days=days, now=now)
        with self.issued_file.open("a", encoding="utf-8") as f:
            f.write(f"{issued.serial} {device_id}\n")
        return issued

    def _issue(self, cn: str, names: list[str], cert_file: Path, key_file: Path, *, server: bool, days: int,
               now: dt.datetime | None = None) -> Issued:
        self.ensure_ca()
        with _failures(f"the certificate of {cn[:64]!r}", self.dir):
            return self._sign(cn, names, cert_file, key_file, server=server, days=days, now=now)

    def _sign(self, cn: str, names: list[str], cert_file: Path, key_file: Path, *, server: bool, days: int,
              now: dt.datetime | None) -> Issued:
        import ipaddress

        x509, hashes, serialization, ec, name_oid, eku = _crypto()
        ca_key = serialization.load_pem_private_key((self.dir / "ca.key").read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[Any] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        start = now or dt.datetime.now(dt.timezone.utc)
        serial = x509.random_serial_number()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(name_oid.COMMON_NAME, cn)]))
                .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(serial)
                .not_valid_before(start - dt.timedelta(minutes=5)).not_valid_after(start + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage([eku.SERVER_AUTH if server else eku.CLIENT_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        self._write_pair(cert_file, key_file, cert, key)
        return Issued(cert_file, key_file, normalise_serial(f"{serial:X}"))

    @staticmethod
    def _write_pair(cert_file: Path, key_file: Path, cert: Any, key: Any) -> None:
        _x509, _hashes, serialization, _ec, _n, _e = _crypto()
        atomic_write(key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), mode=0o600)
        atomic_write(cert_file, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)

    # ------------------------------------------------------------------ revocation

    def issued(self) -> list[tuple[str, str]]:
        return _read_pairs(self.issued_file)

    def revoked_list(self) -> list[tuple[str, str]]:
        return _read_pairs(self.revoked_file)

    def revoke_device(self, device_id: str) -> list[str]:
        """Revoke every certificate issued to ``device_id``; returns the newly revoked serials."""
        already = read_revoked(self.revoked_file)
        serials = [serial for serial, who in self.issued() if who == device_id and serial not in already]
        if serials:
            lines = "".join(f"{serial} {who}\n" for serial, who in self.revoked_list())
            lines += "".join(f"{serial} {device_id}\n" for serial in serials)
            atomic_write(self.revoked_file, lines.encode(), mode=0o644)
        return serials


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"{path}: cannot read: {exc}") from exc
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        serial, _, who = line.partition(" ")
        try:
            int(serial, 16)
        except ValueError as exc:
            raise CredentialsError(f"{path}:{number}: expected 'SERIAL_HEX [DEVICE_ID]'") from exc
        out.append((normalise_serial(serial), who.strip()))
    return out


def read_revoked(path: Path) -> set[str]:
    """The revoked serials (upper-case hex) listed in ``path``; a missing file revokes nothing."""
    return {serial for serial, _ in _read_pairs(path)}
