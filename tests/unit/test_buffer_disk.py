"""The free-space headroom and a disk that refuses writes (SQLite's ``max_page_count`` makes the
real SQLite return "database or disk is full")."""

from __future__ import annotations

import shutil
from pathlib import Path

from bridge.protocol.records import Event
from bridge.protocol.topics import CloudTopics
from gateway.observe.accounting import Accounting
from gateway.store.buffer import Budget, DiskBuffer
from gateway.store.lanes import LaneWriter, drop_counter


def make(tmp_path: Path, dropped: list[tuple[int, str]], **kwargs: object) -> DiskBuffer:
    buf = DiskBuffer(tmp_path / "buf", {"telemetry": Budget(10**9), "control": Budget(10**9)},
                     on_dropped=lambda rec, reason: dropped.append((rec.seq, reason)), **kwargs)  # type: ignore[arg-type]
    buf.open()
    return buf


def put(buf: DiskBuffer, lane: str = "telemetry", size: int = 10) -> int:
    return buf.append(lane, "t", lambda seq: b"x" * size, 3).seq  # type: ignore[arg-type]


def test_a_disk_below_its_headroom_keeps_telemetry_from_growing(tmp_path: Path) -> None:
    dropped: list[tuple[int, str]] = []
    free = shutil.disk_usage(tmp_path).free
    buf = make(tmp_path, [])
    for _ in range(5):
        put(buf, size=1000)
    buf.close()
    buf = make(tmp_path, dropped, min_free_bytes=free + 10**12)  # this disk is "nearly full"
    before = buf.bytes_used("telemetry")
    put(buf, size=1000)
    put(buf, size=1000)
    assert dropped == [(1, "disk_full"), (2, "disk_full")]  # oldest first, counted
    assert buf.bytes_used("telemetry") == before
    put(buf, "control", size=1000)  # control is never dropped for capacity
    assert buf.depth("control") == 1


def test_a_full_disk_drops_oldest_telemetry_keeps_control_and_recovers(tmp_path: Path) -> None:
    acc = Accounting()
    buf = DiskBuffer(tmp_path / "buf", {"telemetry": Budget(10**9), "control": Budget(10**9)},
                     sqlite_pragmas={"max_page_count": 40}, sync="normal", on_dropped=drop_counter(acc))
    buf.open()
    lanes = LaneWriter(buf, CloudTopics("gw"), acc, compression="none", level=0, on_written=lambda: None)
    payload = b"y" * 3000
    written = 0
    while buf.disk_full_events == 0 and written < 200:
        buf.append("telemetry", "t", lambda seq: payload, 10)
        written += 1
    assert buf.disk_full_events > 0, "the database never filled up"
    # full: the writes still succeed by dropping the oldest telemetry, each drop counted
    assert acc.dropped["disk_full"] >= 10
    assert buf.depth("telemetry") == written - acc.dropped["disk_full"] // 10
    # everything left is in flight (cannot be dropped): now even control cannot be written and
    # is held in memory, in order, instead of being lost
    taken = buf.take("telemetry", 10**6)
    n = 0
    while lanes.held_control == 0 and n < 200:
        lanes.write_control(Event("dev", n, {"n": n, "pad": "z" * 3000}))
        n += 1
    assert lanes.held_control == 1
    lanes.write_control(Event("dev", n, {"n": n, "pad": "z"}))  # queued behind, not reordered
    assert lanes.held_control == 2
    # the cloud acknowledges the telemetry: space returns and the held records go to disk
    for rec in taken:
        buf.ack(rec.key)
    lanes.retry_held()
    assert lanes.held_control == 0
    assert buf.depth("control") == n + 1
    control = buf.take("control", 10**6)
    assert [r.seq for r in control] == list(range(1, n + 2))
    assert not acc.control_dropped
