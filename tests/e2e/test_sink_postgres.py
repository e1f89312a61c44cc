"""`edge-gateway sink` and `edge-gateway report` with ``--db postgresql://...``: a real sink process,
a real mosquitto and a real PostgreSQL server; credentials from a file or PGPASSWORD, never echoed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.cloud.errors import SinkStoreError, StoreUnavailable
from bridge.cloud.report import build_report
from bridge.protocol.errors import PermanentBridgeError
from bridge.protocol.topics import CloudTopics
from gateway.cli import main
from tests.e2e.test_sink import envelope, publish_all, publisher
from tests.postgres import SINK_PASSWORD, PostgresServer
from tests.support import Mosquitto, eventually

pytestmark = pytest.mark.timeout(90)


def edge_gateway(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60,
                          check=False, stdin=subprocess.DEVNULL, env=env)


def without_password(tmp_path: Path) -> dict[str, str]:
    """The environment minus every way libpq could find the sink's password by itself."""
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    env["PGPASSFILE"] = str(tmp_path / "no-pgpass")
    return env


def seen(db: str, gateway: str, key: str, value: object) -> bool:
    """The report of ``db`` shows ``value`` under ``key`` for ``gateway`` (``status``: its state)."""
    try:
        report = build_report(db)["gateways"]
    except (PermanentBridgeError, SinkStoreError):  # the sink has not created its tables yet
        return False
    got = report.get(gateway, {}).get(key)
    return (got or {}).get("state") == value if key == "status" else got == value


async def test_sink_process_stores_into_postgres_and_survives_a_killed_connection(
        mosquitto: Mosquitto, pg_url: str, postgres_server: PostgresServer, tmp_path: Path) -> None:
    secret = tmp_path / "db-password"
    secret.write_text(SINK_PASSWORD + "\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "sink", "--url", mosquitto.url, "--db", pg_url, "--db-password-file",
        str(secret), env=without_password(tmp_path), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    gw = CloudTopics("gw-7")
    try:
        async with publisher(mosquitto.url, "5") as pub:
            await pub.publish(gw.status, b"online", qos=1, retain=True)  # retained: seen once subscribed
            await eventually(lambda: seen(pg_url, "gw-7", "status", "online"))
            await publish_all(pub, [(gw.telemetry, envelope("gw-7", seq)) for seq in range(1, 11)])
            await eventually(lambda: seen(pg_url, "gw-7", "batches", 10))
            assert postgres_server.terminate_sinks(pg_url.rsplit("/", 1)[1]) >= 1  # the sink's connection
            await publish_all(pub, [(gw.telemetry, envelope("gw-7", seq)) for seq in range(11, 21)])
            await eventually(lambda: seen(pg_url, "gw-7", "batches", 20))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    log = err.decode()
    assert proc.returncode == 0, log
    assert "cannot store a group" in log  # the killed connection failed one group, which came again
    assert SINK_PASSWORD not in log
    result = CliRunner().invoke(main, ["report", "--db", pg_url, "--json", "--fail-on-gaps"],
                                env={"PGPASSWORD": SINK_PASSWORD})
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["totals"]["readings"] == 20 * 5  # every reading once
    assert report["gateways"]["gw-7"]["gaps"]["telemetry"]["missing"] == 0


@pytest.fixture
def stored(pg_url: str) -> str:
    """A PostgreSQL sink database with seqs 1 and 3 of gw-1 (2 is missing)."""
    from bridge.cloud.pg_store import PgSinkStore
    from tests.unit.test_sink_store import batch

    with PgSinkStore(pg_url) as store:
        store.store_batch(batch(1), 1)
        store.store_batch(batch(3), 2)
    return pg_url


def test_report_reads_postgres_with_the_password_from_env_or_file(stored: str, tmp_path: Path) -> None:
    runner = CliRunner()
    by_env = runner.invoke(main, ["report", "--db", stored, "--json"], env={"PGPASSWORD": SINK_PASSWORD})
    assert by_env.exit_code == 0, by_env.output
    assert json.loads(by_env.output)["gateways"]["gw-1"]["gaps"]["telemetry"]["first"] == [[2, 2]]
    secret = tmp_path / "pw"
    secret.write_text(SINK_PASSWORD + "\n")
    by_file = runner.invoke(main, ["report", "--db", stored, "--db-password-file", str(secret), "--fail-on-gaps"],
                            env={"PGPASSWORD": None, "PGPASSFILE": str(tmp_path / "none")})
    assert by_file.exit_code == 1, by_file.output  # the gap
    assert "gw-1 telemetry: missing seqs 2" in by_file.output


def test_a_wrong_password_exits_2_with_one_line_and_no_password(stored: str, tmp_path: Path) -> None:
    env = {**without_password(tmp_path), "PGPASSWORD": "Wr0ng-secret"}
    for command in (["sink", "--url", "mqtt://127.0.0.1:1"], ["report"]):
        res = edge_gateway(*command, "--db", stored, env=env)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
        assert "password authentication failed" in lines[0] and "(--db)" in lines[0]
        assert "Wr0ng-secret" not in res.stderr + res.stdout


def test_a_password_file_needs_a_postgres_url(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    res = CliRunner().invoke(main, ["report", "--db", str(tmp_path / "s.sqlite"), "--db-password-file", str(secret)])
    assert res.exit_code == 2
    assert "--db-password-file needs a PostgreSQL --db" in res.output


def test_store_unavailable_is_what_a_bad_url_gives() -> None:
    from bridge.cloud.sink_port import open_sink_store

    with pytest.raises(StoreUnavailable, match="--db"):
        open_sink_store("postgresql://sink@127.0.0.1:notaport/db")


def test_shared_workers_on_one_postgres_database_need_a_name_each() -> None:
    """Without --worker (or --client-id) every worker on a host would take the same MQTT session."""
    res = CliRunner().invoke(main, ["sink", "--url", "mqtt://127.0.0.1:1", "--db", "postgresql://sink@h/db",
                                    "--shared", "g"])
    assert res.exit_code == 2
    assert "--worker NAME" in res.output
    bad = CliRunner().invoke(main, ["sink", "--url", "mqtt://127.0.0.1:1", "--db", "postgresql://sink@h/db",
                                    "--shared", "g", "--worker", "a/b"])
    assert bad.exit_code == 2 and "--worker" in bad.output


def test_the_default_client_id_tells_workers_apart_and_stays_the_same_for_one() -> None:
    from bridge.cloud.sink import default_client_id

    db = "postgresql://sink@db.example:5432/fleet"
    ids = {default_client_id(db, worker) for worker in ("1", "2", "3")}
    assert len(ids) == 3 and default_client_id(db, "1") == default_client_id(db, "1")
    assert default_client_id(db) not in ids


def test_the_group_limits_reach_the_sink(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--group-max-messages`` / ``--group-max-readings`` become the sink's GroupLimits; out of range
    is a usage error."""
    import bridge.cloud.sink as sink_module
    from bridge.cloud.sink import GroupLimits

    seen: dict[str, object] = {}

    async def fake_run_sink(*args: object, **kwargs: object) -> None:
        seen.update(kwargs)

    monkeypatch.setattr(sink_module, "run_sink", fake_run_sink)
    args = ["sink", "--url", "mqtt://127.0.0.1:1", "--db", str(tmp_path / "s.sqlite")]
    res = CliRunner().invoke(main, [*args, "--group-max-messages", "7", "--group-max-readings", "100"])
    assert res.exit_code == 0, res.output
    assert seen["group_limits"] == GroupLimits(7, 100)
    bad = CliRunner().invoke(main, [*args, "--group-max-messages", "0"])
    assert bad.exit_code == 2 and "--group-max-messages" in bad.output
