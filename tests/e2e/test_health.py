"""/healthz and /readyz on the metrics port: answered without the metrics' basic auth, following
the event loop (healthz), the local broker and the buffer (readyz); a bare TCP probe of the
embedded broker logs no error."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.observe.metrics import health_app, serve
from gateway.observe.snapshot import ReadyBlock, Snapshot, UplinkBlock
from gateway.observe.stats import SnapshotBoard
from gateway.source.broker import EmbeddedBroker
from tests.e2e.gateway_process import GatewayProcess, write_config
from tests.e2e.harness import gateway_config, running_gateway
from tests.support import Mosquitto, eventually, free_port, wait_until


def get(url: str) -> tuple[int, dict[str, Any] | str]:
    """Status and body (JSON when it is) of a GET, without raising for 4xx/5xx."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            status, raw = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read().decode()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


async def aget(url: str) -> tuple[int, Any]:
    return await asyncio.to_thread(get, url)


async def test_probes_follow_the_gateway_and_need_no_auth(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = gateway_config(tmp_path, mosquitto.url, metrics={"listen": f"127.0.0.1:{port}", "refresh_s": 0.05,
                                                           "basic_auth_username": "prom",
                                                           "basic_auth_password": {"env": "UNUSED_IN_TEST"}})
    mosquitto.stop()  # the uplink is down: reported by /readyz, not required
    async with running_gateway(cfg) as gw:
        server = serve(gw.cfg.metrics, SecretStr("s3cret"), gw.board)
        try:
            status, _ = await aget(f"{base}/metrics")
            assert status == 401  # the metrics stay behind basic auth
            await eventually(lambda: gw.board.latest() is not None)
            status, body = await aget(f"{base}/healthz")
            assert status == 200 and body["status"] == "ok", body
            status, body = await aget(f"{base}/readyz")
            assert status == 200, body
            assert body["ready"] is True and body["local_broker"] is True and body["buffer"] is True
            assert body["uplink"] == "disconnected"
            mosquitto.start()

            async def uplink_reported() -> bool:
                return bool((await aget(f"{base}/readyz"))[1]["uplink"] == "connected")

            await eventually(uplink_reported, timeout=30)
        except BaseException:
            server.shutdown()
            raise
    try:
        # the gateway stopped: its broker no longer listens, so it is not ready
        status, body = await aget(f"{base}/readyz")
        assert status == 503, body
        assert body["local_broker"] is False and body["ready"] is False
    finally:
        server.shutdown()


def call(app: Any, path: str) -> tuple[str, dict[str, Any]]:
    seen: list[str] = []
    body = b"".join(app({"PATH_INFO": path}, lambda status, _headers: seen.append(status)))
    return seen[0], json.loads(body)


async def test_healthz_reports_starting_then_ok_then_stalled() -> None:
    board = SnapshotBoard()
    app = health_app(board, stale_after_s=0.2)
    status, body = call(app, "/healthz")
    assert status.startswith("503") and body["status"] == "starting"
    status, body = call(app, "/readyz")
    assert status.startswith("503") and body["ready"] is False
    board.refresh(lambda: Snapshot("gw", ready=ReadyBlock(local_broker=True, buffer=True),
                                   uplink=UplinkBlock(connected=False)))
    status, body = call(app, "/healthz")
    assert status.startswith("200") and body["status"] == "ok"
    assert call(app, "/readyz")[0].startswith("200")
    # the loop stops refreshing: both probes fail once the snapshot is older than the limit
    await eventually(lambda: call(app, "/healthz")[1]["status"] == "stalled", timeout=10)
    assert call(app, "/healthz")[0].startswith("503")
    assert call(app, "/readyz")[0].startswith("503")
    board.refresh(lambda: Snapshot("gw", ready=ReadyBlock(local_broker=True, buffer=False),
                                   uplink=UplinkBlock(connected=True)))
    status, body = call(app, "/readyz")
    assert status.startswith("503") and body["buffer"] is False and body["uplink"] == "connected"


async def test_a_bare_tcp_probe_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    broker = EmbeddedBroker("127.0.0.1", 0)
    addr = await broker.start()
    try:
        for _ in range(3):
            await asyncio.to_thread(lambda: socket.create_connection((addr.host, addr.port), 5).close())

        def probes_seen() -> int:
            return sum(1 for r in caplog.records if r.name == "gateway.source.broker"
                       and r.getMessage().startswith("connection closed before CONNECT"))

        await eventually(lambda: probes_seen() == 3)
    finally:
        await broker.stop()
    loud = [r for r in caplog.records if r.name.startswith("amqtt") and r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]


def image_health_check() -> list[str]:
    """The command of the Dockerfile's HEALTHCHECK (exec form)."""
    text = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("HEALTHCHECK"))
    return list(json.loads(line.split(" CMD ", 1)[1]))


def test_the_image_health_check_passes_while_the_gateway_runs(tmp_path: Path) -> None:
    local, metrics = free_port(), free_port()
    cfg = write_config(tmp_path, local, metrics, f"mqtt://127.0.0.1:{free_port()}", max_count=10, max_age_s=1)
    check = [sys.executable if arg == "python" else arg.replace(":9464/", f":{metrics}/")
             for arg in image_health_check()]

    def passes() -> bool:
        return subprocess.run(check, capture_output=True, check=False, timeout=30).returncode == 0

    assert not passes()  # nothing listens yet
    with GatewayProcess(cfg, local) as gw:
        gw.wait_ready()
        wait_until(passes, message="the image's health check never passed")  # the uplink is down: still ready
        assert gw.terminate() == 0
    assert not passes()
    assert "ERROR" not in gw.log(), gw.log()
