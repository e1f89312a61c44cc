"""A real PostgreSQL server for tests: initdb + pg_ctl in a temp dir, on a free loopback port.

PostgreSQL refuses to run as root and CI runs as root: then the server runs as ``nobody`` (through
``runuser``), owning its data and socket directories. The cluster has a superuser ``postgres`` and a
role ``sink`` (both with scram-sha-256 passwords, no trust login), so tests use real credentials.
:meth:`PostgresServer.new_database` hands each test a fresh database owned by ``sink``. The server
runs with ``fsync=off`` unless asked (``fsync=True``, for benchmarks): it is thrown away after the
session, and speed matters more here.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from tests.support import free_port

SINK_USER = "sink"
SINK_PASSWORD = "s3cret-Sink-pw"  # what a sink logs must never contain this
_SUPER_PASSWORD = "super-pw-not-for-sinks"


def pg_tool(name: str) -> str:
    """Path of a PostgreSQL server binary (PATH, then Debian's /usr/lib/postgresql/*/bin); under CI
    a missing one fails instead of skipping."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} not found (CI must install Debian's postgresql package: see .ci/run)")
        pytest.skip(f"{name} not installed (PostgreSQL server)")
    return found


class PostgresServer:
    """One PostgreSQL cluster in a temp dir; ``start``/``stop`` it, ask it for fresh databases."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync
        self.initdb, self.pg_ctl = pg_tool("initdb"), pg_tool("pg_ctl")
        self.dir = Path(tempfile.mkdtemp(prefix="edge-pg-"))
        self.data, self.sockets = self.dir / "data", self.dir / "sock"
        self.port = free_port()
        self._names = itertools.count(1)
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self.dir.chmod(0o755)
            self._as_user = ["runuser", "-u", "nobody", "--"]

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as_user, *args], capture_output=True, text=True, timeout=60, check=False,
                              cwd=self.dir)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def start(self) -> None:
        self.sockets.mkdir()
        pwfile = self.dir / "pw"
        pwfile.write_text(_SUPER_PASSWORD)
        if self._as_user:
            for path in (self.sockets, pwfile):
                shutil.chown(path, "nobody")
            self.data.mkdir()
            shutil.chown(self.data, "nobody")
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        pwfile.unlink()
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.sockets}"
                   " -c max_connections=60" + ("" if self.fsync else " -c fsync=off -c full_page_writes=off"))
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.data / "server.log"), "-w", "-t", "30",
                  "-o", options, "start")
        with self.admin() as conn:
            conn.execute(f"CREATE ROLE {SINK_USER} LOGIN PASSWORD '{SINK_PASSWORD}'")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A superuser connection (autocommit) for setting up and breaking things."""
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", password=_SUPER_PASSWORD,
                               dbname=dbname, autocommit=True)

    def new_database(self) -> str:
        """A fresh, empty database owned by ``sink``; returns its URL (without password)."""
        name = f"sink_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER {SINK_USER} TEMPLATE template0")
        return self.url(name)

    def url(self, dbname: str, user: str = SINK_USER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def terminate_sinks(self, dbname: str) -> int:
        """Kill every server process of the sink's connections to ``dbname``; how many were killed."""
        with self.admin() as conn:
            row = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                               " WHERE datname = %s AND usename = %s", (dbname, SINK_USER)).fetchone()
        return int(row[0]) if row else 0  # type: ignore[call-overload]
