"""The disk buffer at scale: memory bounded whatever the backlog, opening without reading every key,
and the backlog counted afterwards with its figures always agreeing."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store.buffer import Budget, DiskBuffer
from tests.unit.store.kits import clock_ms

WINDOW = 8
BUDGETS = {"telemetry": Budget(10**12), "control": Budget(10**9)}


def make(directory: Path, **kwargs: float) -> DiskBuffer:
    return DiskBuffer(directory, BUDGETS, sync="normal", clock_ms=clock_ms(), window=WINDOW, **kwargs)  # type: ignore[arg-type]


def fill(directory: Path, records: int, readings: int = 3) -> None:
    """``records`` telemetry records, written many per transaction (write-behind, then forced out)."""
    buf = make(directory, write_behind_s=3600)
    buf.open()
    buf.set_link_up(True)
    for i in range(records):
        buf.append("telemetry", "t", lambda seq: seq.to_bytes(4, "big"), readings)
        if i % 500 == 499:
            buf.persist_due(force=True)
    buf.set_link_up(False)
    buf.close()


def test_an_outage_keeps_only_a_window_in_memory(tmp_path: Path) -> None:
    buf = make(tmp_path / "buf")
    buf.open()
    most = 0
    for _ in range(2000):  # link down: every record goes to disk and waits
        buf.append("telemetry", "t", lambda seq: b"x", 2)
        most = max(most, buf.records_in_memory())
    assert buf.depth("telemetry") == 2000 and buf.readings("telemetry") == 4000
    assert most <= 6 * WINDOW
    buf.close()


def test_opening_a_backlog_loads_a_window_and_the_scan_counts_the_rest(tmp_path: Path) -> None:
    fill(tmp_path / "buf", 3000)
    buf = make(tmp_path / "buf")
    buf.open(scan=False)
    assert buf.records_in_memory() <= 3 * WINDOW
    assert buf.next_seq("telemetry") == 3001  # from the highest key, without reading them all
    seen: list[int] = []
    while True:
        done = buf.scan(100)
        seen.append(buf.depth("telemetry"))
        # what is counted as buffered is exactly what is counted as restored, at every step
        assert buf.readings("telemetry") == buf.restored_readings == 3 * buf.depth("telemetry")
        if done:
            break
    assert seen == sorted(seen) and seen[-1] == 3000 and len(seen) > 10
    buf.close()


@settings(max_examples=15, deadline=None)
@given(records=st.integers(1, 400), scan_steps=st.integers(0, 5), take=st.integers(1, 40))
def test_a_backlog_drains_in_order_while_it_is_being_counted(
        tmp_path_factory: object, records: int, scan_steps: int, take: int) -> None:
    directory = tmp_path_factory.mktemp("buf")  # type: ignore[attr-defined]
    fill(directory, records)
    buf = make(directory)
    buf.open(scan=False)
    for _ in range(scan_steps):
        buf.scan(37)
    sent: list[int] = []
    while batch := buf.take("telemetry", take):
        assert all(rec.replay for rec in batch)  # everything on disk at open is backlog
        sent.extend(rec.seq for rec in batch)
        buf.ack(*(rec.key for rec in batch))
        buf.scan(37)
        assert buf.records_in_memory() <= 3 * WINDOW + take
        assert buf.readings("telemetry") == buf.restored_readings - 3 * len(sent)
    while not buf.scan(37):
        pass
    assert sent == list(range(1, records + 1))
    assert buf.depth("telemetry") == 0 and buf.readings("telemetry") == 0 and buf.restored_readings == 3 * records
    buf.close()
