"""``edge-gateway files push`` refuses what the gateway would refuse before it connects (exit 2)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from gateway.cli import main

URL = "mqtt://127.0.0.1:1"  # nothing listens: every case must fail before connecting


def push(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["files", "push", "--url", URL, "--gateway", "gw-1", *args])
    return result.exit_code, result.output


def test_bad_names_devices_gateways_and_chunk_sizes_exit_2(tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(b"x" * 5000)
    for name in ("../x", "/etc/passwd", ".hidden", "con"):
        code, out = push(str(source), "--name", name)
        assert code == 2 and "bad_name" in out, (name, out)
    assert push(str(source), "--device", "a/b")[0] == 2
    assert push(str(source), "--chunk-bytes", "10")[0] == 2
    bad_gateway = ["files", "push", "--url", URL, "--gateway", "a+b", str(source)]
    assert CliRunner().invoke(main, bad_gateway).exit_code == 2
    assert push(str(tmp_path / "absent"))[0] == 2


def test_an_unreachable_broker_exits_1(tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(b"x" * 5000)
    code, out = push(str(source), "--timeout-s", "2")
    assert code == 1 and "error" in out
