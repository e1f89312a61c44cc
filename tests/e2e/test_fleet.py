"""The fleet load generator against mosquitto and the real sink: what the sink stores is exactly
the manifest (keys, readings, checksum, alerts), and every re-sent message is counted a duplicate."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bridge.cloud.fleet import FleetSettings, send_fleet
from bridge.cloud.fleet_data import Plan, fleet
from bridge.cloud.fleet_verify import verify
from bridge.cloud.sink_store import SinkStore
from bridge.mqtt.errors import BridgeError
from gateway.cli import main
from tests.e2e.test_sink import running_sink
from tests.support import Mosquitto, RecordingClient, eventually, wait_until

pytestmark = pytest.mark.timeout(90)


async def test_a_fleet_with_duplicates_and_replays_is_stored_exactly_once(mosquitto: Mosquitto,
                                                                            tmp_path: Path) -> None:
    db = tmp_path / "sink.sqlite"
    plan = Plan(fleet(20, 3, seed=5, start_ms=1_700_000_000_000), random.Random(5), batch_readings=30,
                duplicates=0.2, replays=0.1, backlog=0.1, alerts=0.05)
    with SinkStore(db, durable=False) as store:
        async with running_sink(mosquitto.url, store) as sink:
            result = await send_fleet(plan, FleetSettings(mosquitto.url, batches=400, connections=2, window=16))
            c = sink.counters
            await eventually(lambda: c.handled == result.messages, message=lambda: f"{c} vs {result}")
    assert result.batches == 400 and result.readings == 400 * 30
    assert result.duplicates > 0 and result.replays > 0 and result.backlog > 0 and result.alerts > 0
    assert c.duplicates == result.duplicates + result.replays
    assert (c.batches, c.readings, c.alerts) == (400, 12_000, result.alerts)
    verdict = verify(plan.manifest, [db])
    assert verdict.problems == []
    assert verdict.observed.readings == 12_000


def test_fleet_send_and_verify_through_the_cli(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A sink process, ``fleet send`` and ``fleet verify`` as a user runs them; then a second run
    stored nowhere makes verify fail with what is missing."""
    db, manifest, other = tmp_path / "sink.sqlite", tmp_path / "fleet.json", tmp_path / "other.json"
    probe = RecordingClient(mosquitto.port).start().wait_connected()
    probe.wait_publish("edge/gw-probe/status", b"online", retain=True)
    probe.stop()
    sink = subprocess.Popen([sys.executable, "-m", "gateway", "sink", "--url", mosquitto.url, "--db", str(db),
                             "--client-id", "fleet-test-sink"], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _has_status(db, "gw-probe"))  # subscribed: the retained status arrived
        res = CliRunner().invoke(main, ["fleet", "send", "--url", mosquitto.url, "--gateways", "5", "--batches", "50",
                                        "--duplicates", "0.2", "--replays", "0.1", "--alerts", "0.1",
                                        "--seed", "3", "--manifest", str(manifest), "--json"])
        assert res.exit_code == 0, res.output
        sent = json.loads(res.output)
        assert sent["batches"] == 50 and sent["readings"] == 2500
        ok = _verify_eventually(db, manifest)
        assert ok.exit_code == 0 and "OK: the stores hold exactly the manifest" in ok.output
    finally:
        sink.terminate()
        sink.wait(10)
    res = CliRunner().invoke(main, ["fleet", "send", "--url", mosquitto.url, "--gateways", "2", "--batches", "4",
                                    "--seed", "4", "--manifest", str(other)])
    assert res.exit_code == 0, res.output
    bad = CliRunner().invoke(main, ["fleet", "verify", "--db", str(db), "--manifest", str(other)])
    assert bad.exit_code == 1
    assert "MISMATCH: 4 of 4 batch keys missing from the ledger" in bad.output
    assert "FAILED" in bad.output


def _has_status(db: Path, gateway: str) -> bool:
    if not db.exists():
        return False
    try:
        with SinkStore.open_readonly(db) as store:
            return gateway in store.statuses()
    except BridgeError:  # the sink has not created its schema yet
        return False


def _verify_eventually(db: Path, manifest: Path) -> Result:
    def verify() -> Result:
        return CliRunner().invoke(main, ["fleet", "verify", "--db", str(db), "--manifest", str(manifest)])

    wait_until(lambda: verify().exit_code == 0)
    return verify()


def test_a_broker_lost_mid_run_exits_1_without_a_manifest(mosquitto: Mosquitto, tmp_path: Path) -> None:
    manifest = tmp_path / "fleet.json"
    tap = RecordingClient(mosquitto.port).start().wait_connected()
    tap.wait_subscribe("edge/+/telemetry")
    sender = subprocess.Popen([sys.executable, "-m", "gateway", "fleet", "send", "--url", mosquitto.url,
                               "--gateways", "3", "--rate", "2000", "--duration", "30", "--manifest", str(manifest)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: len(tap.topics()) >= 5)  # it is sending
        mosquitto.kill()
        _, err = sender.communicate(timeout=30)
    finally:
        tap.stop()
        if sender.poll() is None:
            sender.kill()
    assert sender.returncode == 1
    assert b"error:" in err and b"Traceback" not in err
    assert not manifest.exists()
