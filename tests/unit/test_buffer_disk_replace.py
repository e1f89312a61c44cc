"""A disk that is nearly (or really) full: each new telemetry batch replaces the oldest by size.

The lane keeps the size it had when the disk became tight, within one batch: it neither grows
(the disk has no room) nor dwindles (no more is dropped than the new batch needs), and every
drop is counted as ``disk_full``, oldest first."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.uplink.store import Record
from gateway.observe.accounting import Accounting
from gateway.store.buffer import RECORD_OVERHEAD_BYTES, Budget, DiskBuffer
from gateway.store.lanes import drop_counter

TOPIC = "t"
sizes = st.lists(st.integers(min_value=50, max_value=4000), min_size=5, max_size=40)


def _buffer(directory: Path, acc: Accounting, dropped: list[tuple[int, str]], **kwargs: object) -> DiskBuffer:
    count = drop_counter(acc)

    def on_dropped(rec: Record, reason: str) -> None:
        dropped.append((rec.seq, reason))
        count(rec, reason)

    buf = DiskBuffer(directory, {"telemetry": Budget(10**12), "control": Budget(10**9)}, sync="normal",
                     on_dropped=on_dropped, **kwargs)  # type: ignore[arg-type]
    buf.open()
    return buf


def _append(buf: DiskBuffer, size: int, readings: int) -> int:
    return buf.append("telemetry", TOPIC, lambda seq: b"x" * size, readings).seq


@settings(max_examples=25, deadline=None)
@given(backlog=sizes, incoming=st.lists(st.integers(min_value=50, max_value=4000), min_size=60, max_size=200))
def test_below_the_headroom_each_batch_replaces_the_oldest_by_size(backlog: list[int], incoming: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "buf"
        acc = Accounting()
        dropped: list[tuple[int, str]] = []
        buf = _buffer(directory, acc, dropped)
        for size in backlog:
            _append(buf, size, readings=size // 10)
        buf.close()
        # reopened on a disk "below its headroom": telemetry may no longer grow
        buf = _buffer(directory, acc, dropped, min_free_bytes=shutil.disk_usage(tmp).free + 10**15)
        held = buf.bytes_used("telemetry")
        restored = buf.readings("telemetry")
        largest = max(backlog + incoming) + len(TOPIC) + RECORD_OVERHEAD_BYTES
        written = 0
        last = 0
        for size in incoming:
            last = _append(buf, size, readings=size // 10)
            written += size // 10
            used = buf.bytes_used("telemetry")
            if size + len(TOPIC) + RECORD_OVERHEAD_BYTES <= held:
                # never above the size it had, and never more than one batch below it
                assert held - largest < used <= held, (held, used)
        assert buf.take("telemetry", 10**6)[-1].seq == last  # the newest batch is always kept
        # every drop is counted as disk_full, oldest first, and every reading is accounted for
        assert {reason for _, reason in dropped} <= {"disk_full"}
        seqs = [seq for seq, _ in dropped]
        assert seqs == list(range(1, len(seqs) + 1))
        assert restored + written == acc.dropped["disk_full"] + buf.readings("telemetry")
        buf.close()


def test_a_long_run_on_a_tight_disk_holds_the_backlog_steady(tmp_path: Path) -> None:
    """~1.5 old readings per new one used to be dropped (a smaller oldest batch took a second one
    with it): over a long run the backlog dwindled to almost nothing."""
    acc = Accounting()
    dropped: list[tuple[int, str]] = []
    buf = _buffer(tmp_path / "buf", acc, dropped)
    pattern = [3000, 1000, 2000, 500, 2500]  # batches of varying size
    for i in range(50):
        _append(buf, pattern[i % 5], readings=10)
    buf.close()
    buf = _buffer(tmp_path / "buf", acc, dropped, min_free_bytes=shutil.disk_usage(tmp_path).free + 10**15)
    held, depth = buf.bytes_used("telemetry"), buf.depth("telemetry")
    for i in range(1000):
        _append(buf, pattern[(i * 3) % 5], readings=10)
    assert held - 3000 - RECORD_OVERHEAD_BYTES < buf.bytes_used("telemetry") <= held
    assert abs(buf.depth("telemetry") - depth) <= 2
    assert acc.dropped["disk_full"] == 10 * len(dropped)
    assert 1000 - 2 <= len(dropped) <= 1000 + 2  # about one old batch per new one


def test_a_database_that_refuses_writes_keeps_its_size_and_loses_the_oldest(tmp_path: Path) -> None:
    """SQLite answers "database or disk is full" (its page limit): from then on each new batch
    replaces the oldest; none of the new ones is lost."""
    acc = Accounting()
    dropped: list[tuple[int, str]] = []
    buf = _buffer(tmp_path / "buf", acc, dropped, sqlite_pragmas={"max_page_count": 60})
    sizes = [3000, 1200, 2500, 800]
    n = 0
    while buf.disk_full_events == 0:
        _append(buf, sizes[n % 4], readings=10)
        n += 1
        assert n < 500, "the database never filled up"
    held = buf.bytes_used("telemetry")
    last = 0
    for i in range(300):
        last = _append(buf, sizes[i % 4], readings=10)  # raises if a new batch is lost
    assert held - 3000 - RECORD_OVERHEAD_BYTES - 4000 < buf.bytes_used("telemetry") <= held + 3000
    assert buf.take("telemetry", 10**6)[-1].seq == last
    assert [seq for seq, _ in dropped] == list(range(1, len(dropped) + 1))  # the oldest, in order
    assert set(acc.dropped) == {"disk_full"} and acc.dropped["disk_full"] == 10 * len(dropped)
