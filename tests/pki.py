"""Test certificates made with ``cryptography``: a CA, a server certificate for 127.0.0.1, client
certificates whose common name is a device id (valid, or already expired), and a foreign CA.

Files are written world-readable, because mosquitto drops root to its own user before it reads them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.chmod(path, 0o644)
    return path


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    serial: int


class CertAuthority:
    """A self-signed CA (EC P-256) that issues server and client certificates into ``folder``."""

    def __init__(self, folder: Path, name: str = "test-ca") -> None:
        self.folder = folder
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = _write(folder / f"{name}.crt", self._cert.public_bytes(serialization.Encoding.PEM))

    def server(self, stem: str = "server", ip: str = "127.0.0.1") -> Issued:
        return self._issue(stem, ip, [x509.IPAddress(ipaddress.ip_address(ip))], ExtendedKeyUsageOID.SERVER_AUTH)

    def client(self, common_name: str, *, expired: bool = False, stem: str | None = None) -> Issued:
        """A client certificate with CN = ``common_name``; ``expired``: its validity ended yesterday."""
        return self._issue(stem or common_name, common_name, [], ExtendedKeyUsageOID.CLIENT_AUTH, expired=expired)

    def _issue(self, stem: str, common_name: str, san: list[x509.GeneralName], usage: x509.ObjectIdentifier,
               *, expired: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = (now - 10 * _DAY, now - _DAY) if expired else (now - _DAY, now + 30 * _DAY)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(self._cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return Issued(_write(self.folder / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM)),
                      _write(self.folder / f"{stem}.key", key_pem), cert.serial_number)

    def crl(self, revoked: list[Issued], name: str = "ca.crl") -> Path:
        """A certificate revocation list (PEM) naming ``revoked``."""
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self._cert.subject)
                   .last_update(now - _DAY).next_update(now + 30 * _DAY))
        for issued in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(issued.serial).revocation_date(now - _DAY).build())
        crl = builder.sign(self._key, hashes.SHA256())
        return _write(self.folder / name, crl.public_bytes(serialization.Encoding.PEM))
