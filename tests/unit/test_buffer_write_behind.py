"""Write-behind and crash bookkeeping of the disk buffer, with real SQLite files. A "crash" is a
second buffer opened on the same directory while the first was never closed (what kill -9 leaves)."""

from __future__ import annotations

from pathlib import Path

from gateway.store.buffer import Budget, DiskBuffer
from gateway.store.write_behind import SEQ_RESERVE


def make(path: Path, write_behind_s: float = 0.0) -> DiskBuffer:
    buf = DiskBuffer(path, {"telemetry": Budget(10**9), "control": Budget(10**9)}, sync="normal",
                     write_behind_s=write_behind_s)
    buf.open()
    return buf


def put(buf: DiskBuffer, lane: str = "telemetry") -> int:
    return buf.append(lane, "edge/gw/telemetry", lambda seq: b"p%d" % seq, 10).seq  # type: ignore[arg-type]


def test_a_clean_close_leaves_no_gap_and_no_crash_mark(tmp_path: Path) -> None:
    buf = make(tmp_path / "b")
    for _ in range(3):
        put(buf)
    buf.ack(*(r.key for r in buf.take("telemetry", 3)))
    buf.close()
    again = make(tmp_path / "b")
    assert not again.unclean_start and again.next_seq("telemetry") == 4 and again.depth("telemetry") == 0
    again.close()


def test_acknowledged_in_time_never_touches_the_disk_and_seqs_survive_a_crash(tmp_path: Path) -> None:
    buf = make(tmp_path / "b", write_behind_s=60)
    buf.set_link_up(True)
    seqs = [put(buf) for _ in range(3)]
    taken = buf.take("telemetry", 2)
    assert [r.payload for r in taken] == [b"p1", b"p2"]  # served from memory
    buf.ack(*(r.key for r in taken))
    crashed = make(tmp_path / "b")  # kill -9 now: seq 3 was only in memory
    assert crashed.unclean_start and crashed.unclean_starts == 1
    assert crashed.depth("telemetry") == 0  # nothing of it reached the disk
    # seqs 1..3 may have reached the cloud: they are never handed out again
    assert crashed.next_seq("telemetry") == SEQ_RESERVE + 1 > max(seqs)
    assert crashed.skipped_seqs == {"telemetry": (1, SEQ_RESERVE)}
    crashed.close()
    del buf


def test_unacknowledged_batches_reach_the_disk_when_due_or_when_the_link_drops(tmp_path: Path) -> None:
    buf = make(tmp_path / "b", write_behind_s=60)
    buf.set_link_up(True)
    put(buf)
    assert buf.persist_due() == 0  # not due yet
    assert buf.persist_due(force=True) == 1
    put(buf)
    buf.set_link_up(False)  # the link dropped: the rest goes to disk at once
    put(buf)  # and while it is down every batch is written straight away
    crashed = make(tmp_path / "b")
    assert [r.seq for r in crashed.take("telemetry", 10)] == [1, 2, 3]
    assert crashed.next_seq("telemetry") == SEQ_RESERVE + 1
    crashed.close()
    del buf


def test_control_records_are_always_written_through(tmp_path: Path) -> None:
    buf = make(tmp_path / "b", write_behind_s=60)
    buf.set_link_up(True)
    put(buf, "control")
    crashed = make(tmp_path / "b")
    assert crashed.depth("control") == 1 and crashed.next_seq("control") == 2
    crashed.close()
    del buf


def test_deletes_never_lower_a_reservation(tmp_path: Path) -> None:
    buf = make(tmp_path / "b", write_behind_s=60)
    buf.set_link_up(True)
    put(buf)
    buf.persist_due(force=True)
    for _ in range(5):
        put(buf)  # seqs 2..6 in memory only
    first = buf.take("telemetry", 1)
    buf.ack(first[0].key)  # a delete on disk writes the counter: it must stay >= the reservation
    for rec in buf.take("telemetry", 10):
        buf.ack(rec.key)
    crashed = make(tmp_path / "b")
    assert crashed.next_seq("telemetry") > 6
    crashed.close()
    del buf


def test_without_write_behind_a_crash_skips_no_numbers(tmp_path: Path) -> None:
    buf = make(tmp_path / "b")
    for _ in range(10):
        put(buf)
    buf.ack(*(r.key for r in buf.take("telemetry", 10)))
    crashed = make(tmp_path / "b")  # kill -9 after everything was delivered
    assert crashed.unclean_start and crashed.skipped_seqs == {} and crashed.next_seq("telemetry") == 11
    crashed.close()
    del buf


def test_batches_that_cannot_be_written_at_stop_are_counted_not_lost(tmp_path: Path) -> None:
    dropped: list[tuple[int, str]] = []
    buf = DiskBuffer(tmp_path / "b", {"telemetry": Budget(10**9), "control": Budget(10**9)}, sync="normal",
                     write_behind_s=60, sqlite_pragmas={"max_page_count": 25},
                     on_dropped=lambda rec, reason: dropped.append((rec.readings, reason)))
    buf.open()
    buf.set_link_up(True)
    for _ in range(40):
        buf.append("telemetry", "t", lambda seq: bytes(3000), 100)
    buf.close()  # the disk holds only part of what is in memory
    again = make(tmp_path / "b")
    kept = again.readings("telemetry")
    again.close()
    assert dropped and {reason for _, reason in dropped} == {"disk_full"}
    assert kept + sum(n for n, _ in dropped) == 4000  # every reading either on disk or counted
