"""The gateway-process runner the e2e tests share: a gateway that cannot start fails the wait at once,
with its log, instead of after the timeout."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.e2e.gateway_process import GatewayProcess, write_config
from tests.support import free_port

pytestmark = pytest.mark.timeout(60)  # the waits below allow 600 s: only failing fast passes


def test_a_gateway_that_cannot_start_fails_the_wait_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        config = write_config(tmp_path, port, free_port(), f"mqtt://127.0.0.1:{free_port()}", max_count=10,
                              max_age_s=1)
        with GatewayProcess(config, port) as gateway, pytest.raises(AssertionError) as failed:
            gateway.wait_ready(timeout=600)
    text = str(failed.value)
    assert "gateway exited with 1" in text  # not "timed out"
    assert f"127.0.0.1:{port}" in text and "already in use" in text  # the gateway's own words


async def test_the_async_wait_fails_the_same_way(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text("[gateway]\nno_such_key = 1\n")
    with GatewayProcess(config, free_port()) as gateway, pytest.raises(AssertionError) as failed:
        await gateway.ready(timeout=600)
    assert "gateway exited with" in str(failed.value) and "no_such_key" in str(failed.value)
