"""Three ``edge-gateway sink`` workers in one MQTT 5 shared-subscription group on mosquitto, writing
one PostgreSQL database, fed by ``edge-gateway fleet send`` with duplicates, replays and a late
backlog; one worker is killed with SIGKILL mid-stream and restarted under its name. The database
still holds every reading exactly once (count and checksum), and the ledger has no holes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from gateway.cli import main
from tests.support import Mosquitto, wait_until

pytestmark = pytest.mark.timeout(150)

GATEWAY = [sys.executable, "-m", "gateway"]


class Worker:
    """One sink process of the group; its log tells when it subscribed and whether its session
    was resumed."""

    def __init__(self, name: str, url: str, db: str, folder: Path) -> None:
        self.log = folder / f"worker-{name}.log"
        self.args = [*GATEWAY, "sink", "--url", url, "--db", db, "--shared", "fleet", "--worker", name,
                     "--log-level", "info"]
        self.proc = self.start()

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=out)
        return self.proc

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def subscriptions(self) -> int:
        return self.text().count("sink subscribed")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def ledger_rows(db: str) -> int:
    """Telemetry batches stored so far (the run sends 600)."""
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT COUNT(*) FROM batches WHERE lane = 'telemetry'").fetchone()
        return int(row[0]) if row else 0


def test_a_worker_killed_mid_stream_loses_and_doubles_nothing(mosquitto: Mosquitto, pg_url: str,
                                                               tmp_path: Path) -> None:
    workers = [Worker(name, mosquitto.url, pg_url, tmp_path) for name in ("w1", "w2", "w3")]
    manifest = tmp_path / "fleet.json"
    try:
        wait_until(lambda: all(w.subscriptions() == 1 for w in workers), timeout=30)
        sender = subprocess.Popen(
            [*GATEWAY, "fleet", "send", "--url", mosquitto.url, "--gateways", "20", "--devices-per-gateway", "4",
             "--batches", "600", "--batch-readings", "40", "--rate", "6000", "--duplicates", "0.05",
             "--replays", "0.03", "--backlog", "0.05", "--alerts", "0.05", "--manifest", str(manifest)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(lambda: ledger_rows(pg_url) >= 60, timeout=30)
        victim = workers[1]
        victim.proc.kill()
        victim.proc.wait(10)
        at_kill = ledger_rows(pg_url)
        # the others go on storing while the victim is dead; then it comes back under its name
        wait_until(lambda: ledger_rows(pg_url) >= at_kill + 60, timeout=30)
        victim.start()
        out, err = sender.communicate(timeout=90)
        assert sender.returncode == 0, err.decode()
        wait_until(lambda: victim.subscriptions() == 2, timeout=30)

        def verify() -> int:
            return CliRunner().invoke(main, ["fleet", "verify", "--db", pg_url, "--manifest", str(manifest)]).exit_code

        wait_until(lambda: verify() == 0, timeout=60)
        report = CliRunner().invoke(main, ["report", "--db", pg_url, "--fail-on-gaps"])
    finally:
        for w in workers:
            w.stop()
    assert at_kill < 600, "the victim was killed after the run had ended"
    assert b"600 batches" in out
    assert report.exit_code == 0, report.output  # the ledger has no holes
    # it got its own session back (with what the broker kept for it), not a new one
    assert "session present: True" in victim.text().split("sink subscribed")[-1]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM gaps").fetchone() == (0,)
        dups = conn.execute("SELECT COALESCE(SUM(count), 0) FROM duplicates").fetchone()
    assert dups is not None and int(dups[0]) > 0  # the duplicates and replays were seen and dropped
