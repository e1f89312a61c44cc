"""The sink's files directory across a restart: a transfer's idle time is read from its work files,
and files in ``.incoming`` that belong to no transfer are deleted."""

from __future__ import annotations

import os
import time
from pathlib import Path

from bridge.cloud.file_intake import INCOMING, FileIntake
from bridge.transfer.plan import plan_file


def test_idle_time_survives_a_restart_and_orphans_are_cleaned(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3000))
    old, fresh = plan_file(src, chunk_size=1024), plan_file(src, chunk_size=1024)
    first = FileIntake(tmp_path / "files")
    first.resume()
    first.open("gw-1", old)
    first.open("gw-2", fresh)
    work = tmp_path / "files" / INCOMING
    day_ago = time.time() - 86_400
    for path in work.glob(f"gw-1/{old.id}.*"):
        os.utime(path, (day_ago, day_ago))
    (work / "gw-1" / "0123.part").write_bytes(b"left by a crash before its manifest")
    (work / "gw-3").mkdir()  # a gateway whose transfers are all gone
    second = FileIntake(tmp_path / "files")
    assert second.resume() == 2
    assert [(g, a.id) for g, a in second.idle(3600)] == [("gw-1", old.id)]
    assert not (work / "gw-1" / "0123.part").exists() and not (work / "gw-3").exists()
    second.touch("gw-1", old.id)  # a message came: no longer idle
    assert second.idle(3600) == []
    (_, assembly), = second.idle(-1)[:1]
    second.drop("gw-1", assembly, prune=True)
    assert not (work / "gw-1").exists() and (work / "gw-2").is_dir()
