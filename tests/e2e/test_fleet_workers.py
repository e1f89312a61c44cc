"""Three ``edge-gateway sink`` processes in one MQTT 5 shared-subscription group on mosquitto, fed
by ``edge-gateway fleet send``; one worker is killed with SIGKILL mid-stream and restarted with its
client id and database: the databases together still hold every reading exactly once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from tests.support import Mosquitto, wait_until

pytestmark = pytest.mark.timeout(120)

GATEWAY = [sys.executable, "-m", "gateway"]


class Worker:
    def __init__(self, index: int, url: str, folder: Path) -> None:
        self.db = folder / f"worker-{index}.sqlite"
        self.log = folder / f"worker-{index}.log"
        self.args = [*GATEWAY, "sink", "--url", url, "--db", str(self.db), "--shared", "fleet",
                     "--client-id", f"fleet-worker-{index}", "--log-level", "info"]
        self.proc = self.start()

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=out)
        return self.proc

    def subscriptions(self) -> int:
        return self.log.read_text(errors="replace").count("sink subscribed")

    def stored(self) -> int:
        """Ledger rows so far (0 before the schema exists)."""
        if not self.db.exists():
            return 0
        try:
            with sqlite3.connect(f"{self.db.resolve().as_uri()}?mode=ro", uri=True) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM batches").fetchone()[0])
        except sqlite3.OperationalError:
            return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def test_a_worker_killed_mid_stream_loses_and_doubles_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    workers = [Worker(i, mosquitto.url, tmp_path) for i in (1, 2, 3)]
    manifest = tmp_path / "fleet.json"
    try:
        wait_until(lambda: all(w.subscriptions() == 1 for w in workers), timeout=30)
        sender = subprocess.Popen(
            [*GATEWAY, "fleet", "send", "--url", mosquitto.url, "--gateways", "20", "--devices-per-gateway", "4",
             "--batches", "600", "--batch-readings", "40", "--rate", "6000", "--backlog", "0.05",
             "--alerts", "0.05", "--manifest", str(manifest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        victim = workers[1]
        wait_until(lambda: victim.stored() >= 20, timeout=30)
        victim.proc.kill()
        victim.proc.wait(10)
        killed_at = victim.stored()
        others = sum(w.stored() for w in workers if w is not victim)
        wait_until(lambda: sum(w.stored() for w in workers if w is not victim) >= others + 50, timeout=30)
        victim.start()
        out, err = sender.communicate(timeout=60)
        assert sender.returncode == 0, err.decode()
        assert sender.poll() == 0 and killed_at < 600
        wait_until(lambda: victim.subscriptions() == 2, timeout=30)

        def verify() -> int:
            args = [arg for w in workers for arg in ("--db", str(w.db))]
            return CliRunner().invoke(main, ["fleet", "verify", *args, "--manifest", str(manifest)]).exit_code

        wait_until(lambda: verify() == 0, timeout=60)
    finally:
        for w in workers:
            w.stop()
    assert all(w.stored() > 0 for w in workers)
    assert b"600 batches" in out
