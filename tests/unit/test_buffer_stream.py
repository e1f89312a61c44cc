"""The stream id is born with the buffer and kept in it; it continues only while the buffer provably
continues the same history (clean stop, same untouched database file)."""

from __future__ import annotations

import shutil
from pathlib import Path

from gateway.store.buffer import Budget, DiskBuffer
from gateway.store.stream import CLOSED_MARKER
from tests.unit.test_buffer import put


def opened(path: Path) -> DiskBuffer:
    buf = DiskBuffer(path, {"telemetry": Budget(10**9), "control": Budget(10**9)})
    buf.open()
    return buf


def test_a_new_buffer_gets_a_random_stream_and_a_clean_restart_keeps_it(tmp_path: Path) -> None:
    buf = opened(tmp_path / "b")
    first = buf.stream
    assert len(first) == 16 and int(first, 16) >= 0 and buf.new_stream_reason == "new buffer"
    assert opened(tmp_path / "other").stream != first  # random per buffer
    assert [put(buf) for _ in range(3)] == [1, 2, 3]
    buf.close()
    assert (tmp_path / "b" / CLOSED_MARKER).exists()
    again = opened(tmp_path / "b")
    assert again.stream == first and again.new_stream_reason == ""
    assert put(again) == 4
    again.close()


def test_a_wiped_dir_starts_a_new_stream_from_seq_1(tmp_path: Path) -> None:
    buf = opened(tmp_path / "b")
    old = buf.stream
    put(buf)
    buf.close()
    shutil.rmtree(tmp_path / "b")
    fresh = opened(tmp_path / "b")
    assert fresh.stream != old and put(fresh) == 1
    fresh.close()


def test_a_crash_starts_a_new_stream_and_seqs_still_never_repeat(tmp_path: Path) -> None:
    buf = opened(tmp_path / "b")
    old = buf.stream
    put(buf)
    crashed = opened(tmp_path / "b")  # the first one was never closed: kill -9
    assert crashed.unclean_start and crashed.stream != old
    assert crashed.new_stream_reason == "the previous run did not stop cleanly"
    assert put(crashed) == 2


def test_a_copied_dir_starts_a_new_stream(tmp_path: Path) -> None:
    buf = opened(tmp_path / "b")
    old = buf.stream
    put(buf)
    buf.close()
    shutil.copytree(tmp_path / "b", tmp_path / "copy")
    copy = opened(tmp_path / "copy")
    assert copy.stream != old and "copied" in copy.new_stream_reason
    assert copy.depth("telemetry") == 1  # its records keep the stream they were written with
    copy.close()


def test_a_backup_restored_in_place_starts_a_new_stream(tmp_path: Path) -> None:
    buf = opened(tmp_path / "b")
    put(buf)
    buf.close()
    shutil.copytree(tmp_path / "b", tmp_path / "backup")  # cold backup (copy2 keeps the times)
    later = opened(tmp_path / "b")
    used = later.stream
    assert [put(later) for _ in range(3)] == [2, 3, 4]  # these reach the cloud as (used, 2..4)
    later.close()
    shutil.copytree(tmp_path / "backup", tmp_path / "b", dirs_exist_ok=True)  # overwrite the files in place
    restored = opened(tmp_path / "b")
    assert restored.stream != used  # so its next seq 2 is no duplicate of (used, 2)
    assert put(restored) == 2
    restored.close()
