"""The outbox scanner (gateway/files/outbox.py) on real directories and a real uploads.db: metadata
from the ``.{name}.meta`` file, the disk budget (a file waits, it is not refused), and recovery of a
file left in ``sending/`` without its row."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.protocol.file_topics import FileTopics
from bridge.protocol.files import FileRejected
from gateway.config_sections import FilesSection
from gateway.files.counters import UploadCounters
from gateway.files.device_handoff import into_uploads, no_uploads
from gateway.files.outbox import Outbox, meta_path
from gateway.files.uploader import Uploader
from gateway.files.uploads_db import UploadsDb


def _outbox(tmp: Path, **files: int) -> Outbox:
    db = UploadsDb(tmp / "uploads.db")
    db.open()
    counters = UploadCounters()
    uploader = Uploader(db, tmp / "sending", FileTopics("edge/gw"), counters, max_attempts=3, keep_sent_s=60,
                        on_status=lambda s: None, wake=lambda: None, on_gone=lambda p, n, r: None)
    uploader.start()
    outbox = Outbox(tmp / "outbox", FilesSection(chunk_bytes=1024, **files), uploader, counters)
    outbox.recover()
    return outbox


async def test_metadata_is_taken_and_a_file_over_the_disk_budget_waits(tmp_path: Path) -> None:
    outbox = _outbox(tmp_path, max_disk_bytes=10_000, max_file_bytes=8_000)
    (outbox.dir / "a.txt").write_bytes(b"a" * 6000)
    meta_path(outbox.dir, "a.txt").write_text(json.dumps({"content_type": "text/plain", "meta": {"k": "v"}}))
    (outbox.dir / "b.txt").write_bytes(b"b" * 6000)
    assert await outbox.scan() == 1  # a.txt; b.txt does not fit beside it
    assert outbox.waiting_for_space == 1 and (outbox.dir / "b.txt").exists()
    (manifest,) = [t.row.manifest for t in outbox.uploader.transfers.values()]
    assert (manifest.name, manifest.content_type, dict(manifest.meta)) == ("a.txt", "text/plain", {"k": "v"})
    assert not meta_path(outbox.dir, "a.txt").exists()
    assert sorted(p.name for p in outbox.dir.iterdir()) == ["b.txt"]
    assert outbox.counters.rejected == {}


async def test_bad_metadata_is_refused_with_a_reason(tmp_path: Path) -> None:
    outbox = _outbox(tmp_path)
    (outbox.dir / "c.txt").write_bytes(b"c")
    meta_path(outbox.dir, "c.txt").write_text("[1, 2]")
    assert await outbox.scan() == 0
    assert outbox.counters.rejected == {"malformed": 1}
    assert (outbox.dir / ".rejected" / "c.txt.reason").read_text().startswith("malformed")


async def test_a_file_in_sending_without_its_row_goes_back_to_the_outbox(tmp_path: Path) -> None:
    (tmp_path / "sending").mkdir()
    (tmp_path / "sending" / ("f" * 32)).write_bytes(b"orphan")
    outbox = _outbox(tmp_path)
    assert (outbox.dir / f"recovered-{'f' * 32}").read_bytes() == b"orphan"
    assert await outbox.scan() == 1


async def test_a_file_submitted_by_a_device_is_queued_with_its_device(tmp_path: Path) -> None:
    outbox = _outbox(tmp_path)
    src = tmp_path / "assembled.part"
    src.write_bytes(b"d" * 3000)
    file_id = outbox.take(src, "cam.jpg", "image/jpeg", {"shot": 1}, device="cam-7")
    assert not src.exists()
    manifest = outbox.uploader.transfers[file_id].row.manifest
    assert (manifest.name, manifest.device, manifest.chunks) == ("cam.jpg", "cam-7", 3)
    bad = tmp_path / "other.part"
    bad.write_bytes(b"x")
    with pytest.raises(FileRejected, match="bad_name"):  # the device is told; its upload is dropped
        outbox.take(bad, "../up", device="cam-7")
    assert bad.exists()


@pytest.mark.parametrize("meta", [{"content_type": "x" * 300, "meta": {}}, '{"meta": {"v": NaN}}',
                                  {"meta": {"big": "v" * 5000}}])
async def test_metadata_a_receiver_would_refuse_is_set_aside_and_the_scan_goes_on(
        tmp_path: Path, meta: object) -> None:
    """A manifest the gateway could not read back must never reach uploads.db (a restart would fail)
    nor leave a transaction open (every later save would fail); the next file is still taken."""
    outbox = _outbox(tmp_path)
    (outbox.dir / "a.bin").write_bytes(b"a")
    meta_path(outbox.dir, "a.bin").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    (outbox.dir / "b.bin").write_bytes(b"b")
    assert await outbox.scan() == 1
    assert outbox.counters.rejected == {"malformed": 1}
    assert (outbox.dir / ".rejected" / "a.bin").read_bytes() == b"a"
    (transfer,) = outbox.uploader.transfers.values()
    outbox.uploader.db.save(transfer.row)  # no transaction left open
    outbox.uploader.db.close()
    again = _outbox(tmp_path)  # a restart reads the state back
    assert [t.row.manifest.name for t in again.uploader.transfers.values()] == ["b.bin"]


async def test_a_file_whose_manifest_is_above_max_manifest_bytes_is_refused_at_plan_time(tmp_path: Path) -> None:
    outbox = _outbox(tmp_path, max_manifest_bytes=2048)
    (outbox.dir / "small.bin").write_bytes(b"s" * 5 * 1024)  # 5 chunks: a manifest of ~700 bytes
    (outbox.dir / "wide.bin").write_bytes(b"w" * 40 * 1024)  # 40 chunks: ~3 KB
    assert await outbox.scan() == 1
    assert outbox.counters.rejected == {"too_large": 1}
    reason = (outbox.dir / ".rejected" / "wide.bin.reason").read_text()
    assert reason.startswith("too_large: too_large: manifest of 2974 bytes")


async def test_a_device_hand_off_that_timed_out_is_never_queued_later(tmp_path: Path) -> None:
    """The event loop is busy past the hand-off's timeout: the device is told the file was not taken,
    so when the loop runs again the file must not be queued after all."""
    outbox = _outbox(tmp_path)
    src = tmp_path / "assembled.part"
    src.write_bytes(b"d" * 3000)
    loop = asyncio.get_running_loop()
    on_file = into_uploads(outbox, lambda: loop, timeout_s=0.01)
    errors: list[OSError] = []

    def hand_off() -> None:
        try:
            on_file(src, "cam.jpg", "image/jpeg", {}, "cam-7")
        except OSError as exc:
            errors.append(exc)

    worker = threading.Thread(target=hand_off)
    worker.start()
    worker.join()  # blocks the event loop: the queueing coroutine cannot run before the timeout
    assert [e.errno for e in errors] == [errno.ETIMEDOUT]
    for _ in range(5):
        await asyncio.sleep(0)  # the loop runs what was scheduled meanwhile
    assert outbox.uploader.transfers == {} and src.exists()
    with pytest.raises(OSError, match="disabled"):
        no_uploads(src, "cam.jpg", "image/jpeg", {}, "cam-7")


async def test_rejected_keeps_only_the_newest_files_with_their_reasons(tmp_path: Path) -> None:
    outbox = _outbox(tmp_path, rejected_keep=2)
    for i in range(4):
        (outbox.dir / f"-bad{i}").write_bytes(b"x")  # a bad name: set aside
        assert await outbox.scan() == 0
        rejected = outbox.dir / ".rejected"
        os.utime(rejected / f"-bad{i}", ns=(i * 10**9, i * 10**9))  # in the order they came
    assert sorted(p.name for p in rejected.iterdir()) == ["-bad2", "-bad2.reason", "-bad3", "-bad3.reason"]
    assert outbox.counters.rejected == {"bad_name": 4}


def test_keep_sent_s_below_a_minute_is_refused() -> None:
    with pytest.raises(ValidationError, match="keep_sent_s"):
        FilesSection(keep_sent_s=0)
