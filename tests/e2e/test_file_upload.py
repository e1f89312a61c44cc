"""Uploads end to end: a gateway (in process, embedded local broker) takes files from its outbox and
sends them to a real mosquitto, where a test receiver (tests/e2e/file_receiver.py) reassembles them
and answers with receipts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from gateway.files.uploads import SENDING
from tests.e2e.file_receiver import FileReceiver, drop
from tests.e2e.harness import gateway_config, running_gateway
from tests.support import Mosquitto, eventually


async def test_a_2_mb_file_arrives_whole_and_the_receipt_empties_sending(tmp_path: Path, mosquitto: Mosquitto) -> None:
    data = os.urandom(2 * 1024 * 1024 + 123)
    cfg = gateway_config(tmp_path, mosquitto.url, files={"chunk_bytes": 65536, "scan_interval_s": 0.1, "window": 4})
    receiver = await FileReceiver(tmp_path / "cloud").start(mosquitto.url)
    try:
        async with running_gateway(cfg) as gw:
            assert gw.parts.uploads is not None
            counters = gw.parts.uploads.counters
            await drop(cfg.outbox_dir / "bundle.tar", data)
            (cfg.outbox_dir / ".hidden").write_bytes(b"ignored")
            (cfg.outbox_dir / "a-directory").mkdir()
            await eventually(lambda: counters.files_stored == 1, timeout=30)
            file_id = next(iter(receiver.stored))
            assert receiver.sha256(file_id) == hashlib.sha256(data).hexdigest()
            await eventually(lambda: receiver.status_states(file_id) == ["sent", "stored"],
                             message=lambda: repr(receiver.statuses))
            assert list((cfg.files_dir / SENDING).iterdir()) == []
            assert sorted(p.name for p in cfg.outbox_dir.iterdir()) == [".hidden", "a-directory"]
            chunks = -(-len(data) // 65536)
            assert counters.chunks_sent == chunks and counters.chunks_resent == 0
            assert counters.bulk_bytes == len(data) == receiver.chunk_bytes
            assert gw.parts.uploads.db.listing()[0]["state"] == "stored"
    finally:
        await receiver.close()


async def test_a_too_large_file_and_a_bad_name_are_set_aside_with_a_reason(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = gateway_config(tmp_path, mosquitto.url, files={"max_file_bytes": 5000, "scan_interval_s": 0.1})
    async with running_gateway(cfg) as gw:
        assert gw.parts.uploads is not None
        counters = gw.parts.uploads.counters
        await drop(cfg.outbox_dir / "big.bin", b"x" * 5001)
        await drop(cfg.outbox_dir / "-dash", b"x")
        await eventually(lambda: counters.rejected == {"too_large": 1, "bad_name": 1})
        rejected = cfg.outbox_dir / ".rejected"
        assert (rejected / "big.bin").stat().st_size == 5001
        assert (rejected / "big.bin.reason").read_text().startswith("too_large")
        assert (rejected / "-dash.reason").read_text().startswith("bad_name")
        assert counters.files_queued == 0


@pytest.mark.parametrize(("chunk_bytes", "size", "reason"), [
    (4096, 6000, "chunk 0 was sent 3 times"),  # a chunk above the limit
    (1024, 60 * 1024, "the manifest was sent 3 times"),  # 1 KiB chunks fit, their manifest (~4.5 KB) does not
])
async def test_a_message_the_broker_never_takes_fails_the_transfer_after_max_attempts(
        tmp_path: Path, mosquitto: Mosquitto, chunk_bytes: int, size: int, reason: str) -> None:
    """mosquitto drops the connection on a message above its max_packet_size: each send of the chunk
    or of the manifest is an attempt, until the transfer is given up with a FileStatus ``failed``
    (the manifest used to be sent again for ever)."""
    mosquitto.stop()
    limited = Mosquitto(port=mosquitto.port, extra_conf="max_packet_size 3000\n")
    limited.start()
    cfg = gateway_config(tmp_path, mosquitto.url, files={"chunk_bytes": chunk_bytes, "scan_interval_s": 0.1,
                                                         "max_attempts": 3})
    receiver = await FileReceiver(tmp_path / "cloud").start(limited.url)
    try:
        async with running_gateway(cfg) as gw:
            assert gw.parts.uploads is not None
            counters = gw.parts.uploads.counters
            await drop(cfg.outbox_dir / "refused.bin", os.urandom(size))
            await eventually(lambda: counters.files_failed == 1, timeout=30)
            await eventually(lambda: [s["state"] for s in receiver.statuses] == ["failed"], timeout=30)
            assert reason in receiver.statuses[0]["reason"]
            if chunk_bytes == 4096:
                assert counters.chunks_sent == 2 and counters.chunks_resent >= 2
            else:
                assert counters.manifests_sent == 3 and counters.chunks_sent <= 1  # one beside it (window 2)
            assert (cfg.outbox_dir / ".rejected" / "refused.bin").stat().st_size == size
    finally:
        await receiver.close()
        limited.cleanup()
