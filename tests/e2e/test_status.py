"""`edge-gateway status` against a running gateway: connected devices, a rejected message with its
device, topic and reason, lanes and link, then "stopped" once the gateway is gone."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from gateway.cli import main
from gateway.observe.status import StatusUnavailable, read_status, write_in_place
from tests.e2e.harness import Devices, gateway_config, local_url, running_gateway, telemetry
from tests.support import Mosquitto, eventually


def run_status(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["status", "-c", str(config), *args], env={"COLUMNS": "80"})


def written_after(path: Path, t: float, check: Any = None) -> bool:
    try:
        doc = read_status(path)
    except StatusUnavailable:  # not written yet
        return False
    return bool(doc["ts"] > t and (check is None or check(doc)))


async def test_status_shows_devices_rejects_lanes_and_link(tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nid = "gw-test"\ndata_dir = "{tmp_path / "data"}"\n')
    cfg = gateway_config(tmp_path, mosquitto.url, status={"interval_s": 0.2})
    status_file = cfg.status_file
    assert status_file == tmp_path / "data" / "status.json"
    async with running_gateway(cfg) as gw:
        a = await Devices.connect(local_url(gw), client_id="dev-alpha")
        b = await Devices.connect(local_url(gw), client_id="dev-bravo-with-a-long-client-id-000000000001")
        await a.publish_all([telemetry("dev-alpha", 1, int(time.time() * 1000), temperature=21.5)])
        await b.publish_all([("devices/dev-bravo/telemetry", b"{not json"),
                             ("devices/sensor-9/telemetry/temperature", b"warm")])
        t = time.time()

        def has_all(doc: dict[str, Any]) -> bool:
            return len(doc["last_rejects"]) == 2 and len(doc["connected_devices"]) == 2 and doc["uplink"]["connected"]

        await eventually(lambda: written_after(status_file, t, has_all), timeout=30,
                         message=lambda: status_file.read_text() if status_file.exists() else "no file")

        result = await asyncio.to_thread(run_status, config, "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.output)
        assert doc["state"] == "running" and doc["stale"] is False
        assert doc["gateway"] == "gw-test"
        assert [c["client_id"] for c in doc["connected_devices"]] == [
            "dev-alpha", "dev-bravo-with-a-long-client-id-000000000001"]
        rejects = doc["last_rejects"]
        assert [(r["device"], r["topic"]) for r in rejects] == [
            ("dev-bravo", "devices/dev-bravo/telemetry"), ("sensor-9", "devices/sensor-9/telemetry/temperature")]
        assert all(r["reason"] in doc["rejects"] for r in rejects)
        assert set(doc["buffer"]) == {"control", "telemetry"}
        assert doc["config_version"] == gw.config_pusher.version
        assert "eta_s" in doc["uplink"]["drain"]

        table = await asyncio.to_thread(run_status, config)
        assert table.exit_code == 0, table.output
        out = table.output
        assert max(len(line) for line in out.splitlines()) <= 80
        assert "gw-test" in out and "running" in out and "connected" in out
        assert "dev-alpha" in out
        flat = "".join(out.split())  # long values wrap inside their cell but are never cut
        assert "dev-bravo-with-a-long-client-id-000000000001" in flat
        assert "devices/dev-bravo/telemetry" in flat and "devices/sensor-9/telemetry/temperature" in flat
        for r in rejects:
            assert r["reason"] in flat
        await a.close()
        await b.close()

    stopped = await asyncio.to_thread(run_status, config)
    assert stopped.exit_code == 1
    assert "stopped" in stopped.output


def test_status_without_a_running_gateway_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"  # its secret is not set in this shell: status does not need it
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n'
                      '[uplink]\npassword = { env = "EDGE_TEST_STATUS_UNSET_PASSWORD" }\n')
    result = run_status(config)
    assert result.exit_code == 1
    assert f"no status file at {tmp_path / 'data' / 'status.json'}" in " ".join(result.output.split())


def test_status_of_an_old_file_is_stale(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path}"\n[status]\ninterval_s = 1\n')
    doc = {"ts": time.time() - 60, "state": "running", "interval_s": 1}
    (tmp_path / "status.json").write_text(json.dumps(doc))
    assert read_status(tmp_path / "status.json")["stale"] is True
    stale = run_status(config, "--json")
    assert stale.exit_code == 1 and "not running or is stuck" in " ".join(stale.output.split())
    assert json.loads(stale.output[:stale.output.rindex("}") + 1])["age_s"] >= 59
    (tmp_path / "status.json").write_text("{half")
    result = run_status(config)
    assert result.exit_code == 1 and "cannot read the status file" in result.output


def test_a_reader_never_sees_half_a_status_file(tmp_path: Path) -> None:
    """The writer rewrites the file in place, longer and shorter documents in turn: readers racing
    it always parse a whole document."""
    path = tmp_path / "status.json"
    write_in_place(path, json.dumps({"ts": time.time(), "n": 0}).encode())
    done = threading.Event()

    def writer() -> None:
        for n in range(1, 400):
            write_in_place(path, json.dumps({"ts": time.time(), "n": n, "pad": "x" * (n * 97 % 20_000)}).encode())
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        assert read_status(path)["n"] >= 0  # raises StatusUnavailable on a torn file
    thread.join()
    assert read_status(path)["n"] == 399


def test_the_status_file_is_rewritten_in_place_never_replaced_or_truncated(tmp_path: Path) -> None:
    """Same inode, never shorter: the kernel can keep the pages dirty and write them back once in a
    while instead of a new file (and, on ext4, an immediate write-back) every few seconds."""
    path = tmp_path / "status.json"
    write_in_place(path, json.dumps({"ts": time.time(), "n": 1, "pad": "x" * 5000}).encode())
    inode, size = path.stat().st_ino, path.stat().st_size
    write_in_place(path, json.dumps({"ts": time.time(), "n": 2}).encode())
    assert path.stat().st_ino == inode and path.stat().st_size == size
    assert read_status(path)["n"] == 2 and "pad" not in read_status(path)
    assert path.stat().st_mode & 0o777 == 0o644
