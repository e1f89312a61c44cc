"""Uploads end to end: a gateway (in process, embedded local broker) takes files from its outbox and
sends them to a real mosquitto, where a test receiver (tests/e2e/file_receiver.py) reassembles them
and answers with receipts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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


async def test_a_chunk_never_acknowledged_fails_the_transfer_after_max_attempts(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    """mosquitto refuses messages above its max_packet_size: each send of the chunk fails (the
    connection drops), until the transfer is given up with a FileStatus ``failed``."""
    mosquitto.stop()
    limited = Mosquitto(port=mosquitto.port, extra_conf="max_packet_size 3000\n")
    limited.start()
    cfg = gateway_config(tmp_path, mosquitto.url, files={"chunk_bytes": 4096, "scan_interval_s": 0.1,
                                                         "max_attempts": 3})
    receiver = await FileReceiver(tmp_path / "cloud").start(limited.url)
    try:
        async with running_gateway(cfg) as gw:
            assert gw.parts.uploads is not None
            counters = gw.parts.uploads.counters
            await drop(cfg.outbox_dir / "too-big-chunks.bin", os.urandom(6000))
            await eventually(lambda: counters.files_failed == 1, timeout=30)
            await eventually(lambda: [s["state"] for s in receiver.statuses] == ["failed"], timeout=30)
            assert "sent 3 times" in receiver.statuses[0]["reason"]
            assert counters.chunks_sent == 2 and counters.chunks_resent >= 2
            assert (cfg.outbox_dir / ".rejected" / "too-big-chunks.bin").stat().st_size == 6000
    finally:
        await receiver.close()
        limited.cleanup()


async def test_a_manifest_the_broker_refuses_fails_the_transfer_after_max_attempts(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Chunks of 1 KiB fit mosquitto's max_packet_size, the manifest of 60 of them (~4.5 KB) does not:
    each send of it costs the connection. The manifest's sends count as attempts, so the transfer
    fails after max_attempts instead of sending the manifest again for ever."""
    mosquitto.stop()
    limited = Mosquitto(port=mosquitto.port, extra_conf="max_packet_size 3000\n")
    limited.start()
    cfg = gateway_config(tmp_path, mosquitto.url, files={"chunk_bytes": 1024, "scan_interval_s": 0.1,
                                                         "max_attempts": 3})
    receiver = await FileReceiver(tmp_path / "cloud").start(limited.url)
    try:
        async with running_gateway(cfg) as gw:
            assert gw.parts.uploads is not None
            counters = gw.parts.uploads.counters
            await drop(cfg.outbox_dir / "many-chunks.bin", os.urandom(60 * 1024))
            await eventually(lambda: counters.files_failed == 1, timeout=30)
            await eventually(lambda: [s["state"] for s in receiver.statuses] == ["failed"], timeout=30)
            assert "manifest was sent 3 times" in receiver.statuses[0]["reason"]
            assert counters.manifests_sent == 3 and counters.chunks_sent <= 1  # at most one beside it (window 2)
            assert (cfg.outbox_dir / ".rejected" / "many-chunks.bin").stat().st_size == 60 * 1024
    finally:
        await receiver.close()
        limited.cleanup()
