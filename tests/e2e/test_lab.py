"""README quick-start command 1: `edge-gateway lab` runs the whole system and ends with a report.
Its local broker runs with device identities on: the simulated devices log in with the passwords
the lab gave them, and an anonymous client is refused."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway.lab import SPARE_PREFIX, TEMPORARY_SINK
from tests.support import RecordingClient, free_port

REFUSED = {0x86, 0x87}  # MQTT 3.1.1 CONNACK 4 (bad user name or password) and 5 (not authorised), as paho reports them


def lab_command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "lab", "--duration", "4", "--devices", "4", "--rate-hz", "5",
            "--cloud-port", "0", "--json", *extra]


def check_report(stdout: str) -> dict[str, Any]:
    out = json.loads(stdout)
    gw = out["gateway"]
    assert out["ok"] is True
    assert gw["readings_in"] >= 4 * 5 * 3 * 2  # 4 devices x 5 Hz x 3 metrics, at least 2 s of data
    assert gw["readings_in"] == gw["delivered"] + sum(gw["filtered"].values()) + sum(gw["dropped"].values())
    assert gw["buffered"] == 0 and gw["pending"] == 0
    assert out["sink"]["readings"] == gw["delivered"]
    assert out["sink"]["duplicates_dropped"] == 0 and out["sink"]["missing_seqs"] == 0
    assert out["security"]["authenticated_connects"] >= 4  # every simulated device logged in
    return dict(out)


def test_lab_runs_end_to_end_and_reports(tmp_path: Path) -> None:
    plot = tmp_path / "lab.png"
    res = subprocess.run(lab_command("--local-port", "0", "--plot", str(plot)), capture_output=True, text=True,
                         timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-2000:]
    out = check_report(res.stdout)
    assert out["plot"] == str(plot)
    data = plot.read_bytes()  # the timeline sampled once a second while the lab ran
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data.endswith(b"IEND\xaeB`\x82")
    assert 20_000 < len(data) < 500_000
    # the temporary directory is gone: the report names no path in it
    assert out["data_dir"] is None and out["report"]["db"] == TEMPORARY_SINK
    assert "edge-lab-" not in res.stdout


async def attempt(port: int, username: str | None = None, password: str | None = None) -> int | None:
    """One connection attempt; its CONNACK code, or None when nothing listens yet."""
    client = RecordingClient(port, username or "anonymous-probe", username, password).start()
    try:
        deadline = time.monotonic() + 5
        while not client.settled():
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.02)
        return client.connack
    finally:
        client.stop()


async def test_lab_devices_need_their_passwords(tmp_path: Path) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *lab_command("--local-port", str(port), "--data-dir", str(tmp_path)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    try:
        anonymous = None
        deadline = time.monotonic() + 60
        while anonymous is None and time.monotonic() < deadline and proc.returncode is None:
            anonymous = await attempt(port)
        assert anonymous in REFUSED
        spares = dict(line.split(":", 1) for line in (tmp_path / "devices.credentials").read_text().splitlines())
        spare = f"{SPARE_PREFIX}0001"
        assert await attempt(port, spare, spares[spare]) == 0
        assert await attempt(port, spare, spares[spare] + "x") in REFUSED
    finally:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    out = check_report(stdout.decode())
    assert out["report"]["db"] == str(tmp_path / "sink.sqlite") and out["data_dir"] == str(tmp_path)
    assert out["security"]["denied"]  # the refused attempts were counted


def test_lab_moves_to_a_free_port_when_1883_is_taken() -> None:
    """The quick start right after `apt install mosquitto`, whose service holds 1883: the lab's local
    broker takes another port instead of failing (an explicit --local-port is never moved)."""
    import contextlib
    import socket

    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # already taken by someone else: the same situation
            holder.bind(("127.0.0.1", 1883))
            holder.listen()
        res = subprocess.run(lab_command(), capture_output=True, text=True, timeout=120, check=False,
                             stdin=subprocess.DEVNULL)
        assert res.returncode == 0, res.stderr[-2000:]
        check_report(res.stdout)
        pinned = subprocess.run(lab_command("--local-port", "1883"), capture_output=True, text=True, timeout=120,
                                check=False, stdin=subprocess.DEVNULL)
    assert pinned.returncode == 1
    assert pinned.stderr.strip().splitlines()[-1].startswith("error: the local broker cannot listen on 127.0.0.1:1883")
    assert "Traceback" not in pinned.stderr
