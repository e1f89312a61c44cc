"""How the sink's file receiver ends and resumes transfers, against mosquitto: an upload its gateway
reports failed is dropped, one idle for ``expire_s`` expires, a file failed here is answered
``failed`` again, and a reconnect that kept the broker session does not ask for what the broker
still holds. A plain MQTT client plays the gateway (tests/e2e/test_sink_files.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge.cloud.sink_port import open_sink_store
from bridge.protocol.records import FileStatus, Stamp, encode_control
from tests.e2e.exactly_once import serving
from tests.e2e.test_sink_files import CHUNK, GW, file_row, gateway, sha, sink, some_file
from tests.support import Mosquitto, eventually

pytestmark = pytest.mark.timeout(60)


async def test_an_upload_its_gateway_failed_is_dropped_and_its_chunks_are_answered_failed(
        mosquitto: Mosquitto, sink_db: str | Path, tmp_path: Path) -> None:
    path, manifest = some_file(tmp_path, 5 * CHUNK)
    root = tmp_path / "files"
    with open_sink_store(sink_db, durable=False) as store:
        async with gateway(mosquitto.url) as gw, serving(sink(mosquitto.url, store, root), 10) as s:
            gw.manifest(path, manifest)
            for index in (0, 1):
                gw.chunk(manifest.id, index)
            await eventually(lambda: (file_row(store, manifest.id) or {}).get("received_chunks") == 2)
            assert os.listdir(root / ".incoming" / "gw-1") != []
            status = FileStatus(manifest.id, "up", "failed", reason="max_attempts")
            gw.conn.publish(GW.file_status, encode_control(status, Stamp("gw-1", 1)))
            await eventually(lambda: (file_row(store, manifest.id) or {}).get("state") == "failed")
            assert s.files is not None and s.files.counters.abandoned == 1
            assert not (root / ".incoming" / "gw-1").exists()  # work files and directory gone
            gw.chunk(manifest.id, 2)  # a late chunk, then the manifest again: "failed", never "missing"
            await eventually(lambda: gw.states(manifest.id) == ["failed"])
            gw.manifest(path, manifest)
            await eventually(lambda: s.files is not None and s.files.counters.manifests == 2)
            row = file_row(store, manifest.id)
            assert s.counters.file_statuses == 1
    assert "missing" not in gw.states(manifest.id)
    assert gw.receipts[0].reason == "abandoned"
    assert row is not None and (row["state"], row["reason"], row["path"]) == ("failed", "abandoned", None)
    assert not (root / "gw-1").exists()


async def test_a_transfer_idle_for_expire_s_expires_counted_and_is_cleaned_up(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    path, manifest = some_file(tmp_path, 4 * CHUNK)
    root = tmp_path / "files"
    with open_sink_store(tmp_path / "sink.sqlite", durable=False) as store:
        async with gateway(mosquitto.url) as gw, \
                serving(sink(mosquitto.url, store, root, stall_s=0.2, expire_s=0.5), 10) as s:
            gw.manifest(path, manifest)
            gw.chunk(manifest.id, 0)
            await eventually(lambda: "failed" in gw.states(manifest.id))
            assert s.files is not None and s.files.counters.expired == 1 and len(s.files.intake) == 0
            gw.chunk(manifest.id, 1)  # too late: "failed" again
            await eventually(lambda: gw.states(manifest.id).count("failed") == 2)
            row = file_row(store, manifest.id)
    failed = [r for r in gw.receipts if r.state == "failed"]
    assert [r.reason for r in failed] == ["expired", "expired"]
    assert row is not None and (row["state"], row["reason"]) == ("failed", "expired")
    assert not (root / ".incoming" / "gw-1").exists()


async def test_a_reconnect_with_the_session_kept_does_not_ask_for_the_chunks_the_broker_holds(
        mosquitto: Mosquitto, sink_db: str | Path, tmp_path: Path) -> None:
    path, manifest = some_file(tmp_path, 10 * CHUNK)
    root = tmp_path / "files"
    last = manifest.chunks - 1
    with open_sink_store(sink_db, durable=False) as store:
        async with gateway(mosquitto.url) as gw:
            async with serving(sink(mosquitto.url, store, root), 10):  # a persistent session
                gw.manifest(path, manifest)
                for index in range(3):
                    gw.chunk(manifest.id, index)
                await eventually(lambda: (file_row(store, manifest.id) or {}).get("received_chunks") == 3)
            for index in range(3, last):  # the broker keeps these for the sink's session
                gw.chunk(manifest.id, index)
            await eventually(lambda: gw.conn.pending_count == 0)
            async with serving(sink(mosquitto.url, store, root), 10) as s:
                assert s.files is not None
                files = s.files
                await eventually(lambda: (file_row(store, manifest.id) or {}).get("received_chunks") == last)
                gw.chunk(manifest.id, last)  # (the sink was subscribed, so had resumed, before this one)
                await eventually(lambda: "stored" in gw.states(manifest.id))
                counts = (files.counters.resumes, files.counters.resumes_deferred)
    assert gw.states(manifest.id) == ["stored"]  # never asked for what was on its way
    assert counts == (0, 1)
    assert sha(root / "gw-1" / "dump.bin") == manifest.sha256
