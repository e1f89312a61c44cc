"""What the PostgreSQL store needs to know about its ``--db`` URL and password without psycopg: the
URL without its password (the store's name in logs, errors and the default client id), whether the
URL carries one, reading ``--db-password-file``, and whether a failed connection may pass."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from bridge.cloud.errors import StoreUnavailable

__all__ = ["read_password_file", "redact_url", "turned_away_for_good", "url_has_password"]


def redact_url(url: str) -> str:
    """``postgresql://user@host:port/dbname``: the URL without its password and query."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return f"postgresql://{user}{at}{hostport}{parts.path}"  # one spelling: postgres:// names the same database


def url_has_password(url: str) -> bool:
    """The URL carries a password (in its user info or as a ``password`` parameter)."""
    parts = urlsplit(url)
    return ":" in parts.netloc.rpartition("@")[0] or "password" in parse_qs(parts.query)


def read_password_file(path: Path) -> str:
    """The password a file holds (one trailing newline stripped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StoreUnavailable(f"cannot read the database password file {path}: {exc.strerror} "
                               "(--db-password-file)") from exc
    return text[:-1] if text.endswith("\n") else text


# A connection the server itself turned away ("FATAL:": wrong password, no such role or database, no
# pg_hba.conf entry) stays refused; anything else while connecting (nothing listening, a timeout, too
# many connections, the server starting or shutting down) may pass. libpq reports no SQLSTATE for a
# failed connection, so this reads the server's (English) message.
_PASSING = ("too many clients", "starting up", "shutting down", "in recovery mode", "not yet accepting")


def turned_away_for_good(message: str) -> bool:
    """The text of a failed connection says the server refused it for a reason waiting does not cure."""
    return "FATAL:" in message and not any(phrase in message for phrase in _PASSING)
