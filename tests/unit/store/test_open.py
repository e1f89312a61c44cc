"""Opening the buffer does not wait for the database file: what a previous run left in SQLite's
write-ahead log is checkpointed later by the running gateway, not while it starts (an open that
checkpoints must wait until every page of the database not yet on disk is written: seconds after
a large backlog was written or copied)."""

from __future__ import annotations

import shutil
from pathlib import Path

from bridge.uplink.store import Lane
from gateway.store.buffer import Budget, DiskBuffer
from gateway.store.rows import DB_FILE

BUDGETS: dict[Lane, Budget] = {"telemetry": Budget(1 << 30), "control": Budget(1 << 30)}
RECORDS = 20


def crashed_buffer(tmp_path: Path) -> Path:
    """A buffer as kill -9 leaves it: its records written to the log, not yet to the database file."""
    live, crashed = tmp_path / "live", tmp_path / "crashed"
    buf = DiskBuffer(live, BUDGETS)
    buf.open()
    for _ in range(RECORDS):
        buf.append("telemetry", "edge/gw/telemetry", lambda seq: b"x" * 2000, 1)
    shutil.copytree(live, crashed)  # while the buffer is open: the image a crash leaves
    buf.close()
    return crashed


def test_open_writes_nothing_into_the_database_file(tmp_path: Path) -> None:
    crashed = crashed_buffer(tmp_path)
    db, log = crashed / DB_FILE, crashed / f"{DB_FILE}-wal"
    size = db.stat().st_size
    assert log.stat().st_size > RECORDS * 2000  # the records are in the log only
    buf = DiskBuffer(crashed, BUDGETS)
    buf.open()
    try:
        assert db.stat().st_size == size  # not checkpointed at open
        assert buf.unclean_start
        assert buf.depth("telemetry") == RECORDS
        assert len(buf.take("telemetry", RECORDS)) == RECORDS  # every payload readable from the log
    finally:
        buf.close()


def test_records_survive_a_second_crash_after_an_open_that_did_not_checkpoint(tmp_path: Path) -> None:
    crashed = crashed_buffer(tmp_path)
    buf = DiskBuffer(crashed, BUDGETS)
    buf.open()
    again = tmp_path / "again"
    shutil.copytree(crashed, again)  # killed again right after the open
    buf.close()
    reopened = DiskBuffer(again, BUDGETS)
    reopened.open()
    try:
        assert reopened.depth("telemetry") == RECORDS
        assert reopened.next_seq("telemetry") == RECORDS + 1
    finally:
        reopened.close()
