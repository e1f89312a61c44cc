"""What is particular to the disk buffer (the behaviour every store shares is asserted in
tests/unit/store): a closed buffer, and which error tree an error belongs to on each side of the
RecordStore port."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.protocol.errors import BridgeError
from bridge.uplink.store import StoreError
from gateway.errors import GatewayError, StorageError
from gateway.store.buffer import Budget, DiskBuffer
from tests.unit.store.kits import clock_ms


def make(tmp_path: Path) -> DiskBuffer:
    buf = DiskBuffer(tmp_path / "buf", {"telemetry": Budget(10**9), "control": Budget(2000)}, clock_ms=clock_ms())
    buf.open()
    return buf


def put(buf: DiskBuffer, lane: str = "telemetry", size: int = 10, readings: int = 5) -> int:
    rec = buf.append(lane, f"t/{lane}", lambda seq: bytes([seq % 256]) * size, readings)  # type: ignore[arg-type]
    return rec.seq


def test_a_closed_buffer_refuses_writes_with_a_gateway_error(tmp_path: Path) -> None:
    buf = make(tmp_path)
    buf.close()
    with pytest.raises(StorageError) as info:
        put(buf)
    assert isinstance(info.value, GatewayError) and not isinstance(info.value, BridgeError)


def test_through_the_port_the_forwarder_sees_only_the_bridges_store_error(tmp_path: Path) -> None:
    buf = make(tmp_path)
    put(buf)
    buf.close()
    with pytest.raises(StoreError) as taking:
        buf.take("telemetry", 1)
    with pytest.raises(StoreError) as acking:
        buf.ack("t:1")
    for raised in (taking.value, acking.value):
        assert not isinstance(raised, GatewayError)

