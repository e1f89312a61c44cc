"""mosquitto running the shipped conf/mosquitto/ configuration (passwords, ACL, client certificates),
with only its paths and ports substituted and the shipped ACL file in place, for tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.pki import CertAuthority
from tests.support import Mosquitto, free_port, mosquitto_password_line

SHIPPED = Path(__file__).resolve().parents[1] / "conf" / "mosquitto"


def shipped_config(plain_port: int, tls_port: int, *, crl: bool = False) -> str:
    """The shipped mosquitto.conf with its paths and ports replaced; every replaced text must be there.
    ``crl``: with its commented-out ``crlfile`` line switched on."""
    text = (SHIPPED / "mosquitto.conf").read_text()
    substitutions = [("\n# crlfile ", "\ncrlfile ")] if crl else []
    substitutions += [
        ("/etc/mosquitto/edge/acl", str(SHIPPED / "acl")),  # the shipped ACL file, as it is
        ("/etc/mosquitto/edge/", "{dir}/"),
        ("/var/lib/mosquitto/", "{dir}/"),
        ("\nlistener 1883\n", f"\nlistener {plain_port} 127.0.0.1\n"),
        ("\nlistener 8883\n", f"\nlistener {tls_port} 127.0.0.1\n"),
    ]
    for old, new in substitutions:
        assert old in text, f"the shipped mosquitto.conf no longer contains {old!r}"
        text = text.replace(old, new)
    return text


@dataclass
class Deployment:
    """The broker, its TLS (client certificate) port, the CA it trusts and one it does not."""

    broker: Mosquitto
    tls_port: int
    ca: CertAuthority
    foreign_ca: CertAuthority

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def passwd(self) -> Path:
        return self.broker.dir / "passwd"


def _folder(path: Path) -> Path:
    path.mkdir()
    os.chmod(path, 0o755)  # mosquitto reads as its own user
    return path


@contextlib.contextmanager
def secure_mosquitto(passwords: Mapping[str, str], *, start: bool = True, crl: bool = False) -> Iterator[Deployment]:
    """The shipped configuration with a password file holding ``passwords`` (mosquitto_passwd's
    format), a CA and a server certificate for 127.0.0.1; ``crl``: with the CRL file switched on
    (write ``certs/ca.crl`` before starting)."""
    plain_port, tls_port = free_port(), free_port()
    broker = Mosquitto(port=plain_port, config=shipped_config(plain_port, tls_port, crl=crl))
    try:
        ca = CertAuthority(_folder(broker.dir / "certs"), "ca")
        ca.server("server")
        deployment = Deployment(broker, tls_port, ca, CertAuthority(_folder(broker.dir / "foreign"), "foreign-ca"))
        deployment.passwd.write_text("".join(mosquitto_password_line(u, p) + "\n" for u, p in passwords.items()))
        os.chmod(deployment.passwd, 0o644)
        if start:
            broker.start()
        yield deployment
    finally:
        broker.cleanup()
