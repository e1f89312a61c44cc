"""Operational errors at start (a taken port, an unwritable data directory, an unreachable broker)
end the command with exit 1 and one line naming the cause and the fix, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.gateway_process import write_config
from tests.support import free_port


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def fails_in_one_line(*args: str) -> str:
    """Run ``edge-gateway ARGS``; assert exit 1, no traceback and one ``error:`` line, and return it."""
    res = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120,
                         check=False, stdin=subprocess.DEVNULL)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    assert res.stderr.rstrip().splitlines()[-1] == errors[0], res.stderr  # the last thing said
    return errors[0]


def test_run_with_the_broker_port_taken(tmp_path: Path, taken_port: int) -> None:
    cfg = write_config(tmp_path, taken_port, free_port(), f"mqtt://127.0.0.1:{free_port()}", max_count=10,
                       max_age_s=1)
    line = fails_in_one_line("run", "-c", str(cfg))
    assert f"127.0.0.1:{taken_port}" in line and "already in use" in line
    assert f"set local_broker.listen in {cfg}" in line


def test_run_with_the_metrics_port_taken(tmp_path: Path, taken_port: int) -> None:
    cfg = write_config(tmp_path, free_port(), taken_port, f"mqtt://127.0.0.1:{free_port()}", max_count=10,
                       max_age_s=1)
    line = fails_in_one_line("run", "-c", str(cfg))
    assert f"metrics endpoint cannot listen on 127.0.0.1:{taken_port}" in line
    assert "set metrics.listen" in line


def test_run_with_an_unwritable_data_dir(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, free_port(), free_port(), f"mqtt://127.0.0.1:{free_port()}", max_count=10,
                       max_age_s=1)
    data = tmp_path / "data"
    if os.geteuid() == 0:
        data.write_text("")  # root may write anywhere: a file where the directory should be fails for anyone
    else:
        data.mkdir(mode=0o500)
    try:
        line = fails_in_one_line("run", "-c", str(cfg))
    finally:
        if data.is_dir():
            data.chmod(0o700)
    assert f"gateway.data_dir ({data})" in line and "can write" in line


def test_sink_with_an_unreachable_broker(tmp_path: Path) -> None:
    url = f"mqtt://user:hunter2@127.0.0.1:{free_port()}"
    line = fails_in_one_line("sink", "--url", url, "--db", str(tmp_path / "s.sqlite"), "--start-timeout", "1")
    assert "no broker reachable" in line and "check --url" in line
    assert "hunter2" not in line  # the password never shows


def test_sink_with_an_unusable_database_path(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    line = fails_in_one_line("sink", "--url", f"mqtt://127.0.0.1:{free_port()}",
                             "--db", str(tmp_path / "afile" / "s.sqlite"))
    assert "cannot open the sink database" in line and "--db" in line


@pytest.mark.parametrize("command", ["command", "push-config"])
def test_operator_commands_with_an_unreachable_broker(tmp_path: Path, command: str) -> None:
    doc = tmp_path / "push.toml"
    doc.write_text("version = 2\n")
    target = ["dev-1", "reboot"] if command == "command" else [str(doc)]
    line = fails_in_one_line(command, "--url", f"mqtt://127.0.0.1:{free_port()}", "--gateway", "gw-1", *target,
                             "--timeout", "2")
    assert "cannot connect" in line and "check --url" in line
