"""The end state every cloud-failure test checks in the sink's database (a SQLite file or a
PostgreSQL URL): each reading the devices got a PUBACK for stored exactly once, every device's seqs
complete and in order, and the telemetry ledger without holes."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bridge.cloud.report import build_report
from bridge.cloud.sink import Sink
from bridge.cloud.sink_port import open_sink_store
from bridge.mqtt.backoff import DecorrelatedJitter
from gateway.observe.accounting import Accounting
from gateway.service import GatewayService
from tests.e2e.harness import PacedDevices
from tests.support import eventually

_PG_READINGS = ("SELECT device, seq, batch_seq FROM readings WHERE gateway = %s ORDER BY batch_seq, ctid")
_PG_LEDGER = "SELECT seq FROM batches WHERE gateway = %s AND lane = 'telemetry' ORDER BY seq"


def sink_rows(db: Path | str, gateway: str = "gw-test") -> tuple[list[tuple[str, int, int]], list[int]]:
    """Readings as (device, device seq, batch seq) in batch order (within a batch in the order
    stored: rowid, or ctid for the rows one COPY wrote), and the telemetry batch seqs."""
    if isinstance(db, str):
        import psycopg

        with psycopg.connect(db) as pg:
            readings = [(str(d), int(s), int(b)) for d, s, b in pg.execute(_PG_READINGS, (gateway,)).fetchall()]
            return readings, [int(s) for (s,) in pg.execute(_PG_LEDGER, (gateway,)).fetchall()]
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT device, seq, batch_seq FROM readings WHERE gateway = ? "
                           "ORDER BY batch_seq, rowid", (gateway,)).fetchall()
        seqs = [s for (s,) in con.execute("SELECT seq FROM batches WHERE gateway = ? "
                                          "AND lane = 'telemetry' ORDER BY seq", (gateway,))]
    return rows, seqs


def assert_stored_exactly_once(db: Path | str, pub: PacedDevices, batches_delivered: int, duplicates: int) -> int:
    """Check the sink's database against what the devices sent and the gateway delivered;
    ``duplicates``: what the sink counted as already stored. Returns the number of batches."""
    rows, batch_seqs = sink_rows(db)
    total = pub.acked_total
    # Zero loss and zero duplicates after dedup: every acknowledged reading exactly once.
    assert len(rows) == total
    per_device: dict[str, list[int]] = {}
    for device, seq, _batch in rows:
        per_device.setdefault(device, []).append(seq)
    for device, acked in pub.acked.items():
        # In gateway batch order, each device's seqs are strictly increasing and complete.
        assert per_device.get(device) == sorted(acked) == list(range(1, pub.published[device] + 1)), device
    # Every batch the gateway counted as delivered is in the ledger once; the seqs have no holes.
    assert batch_seqs == list(range(1, len(batch_seqs) + 1))
    assert len(batch_seqs) == batches_delivered
    report = build_report(db)["gateways"]["gw-test"]
    assert report["readings"] == total
    assert report["gaps"]["telemetry"]["missing"] == 0
    assert report["duplicates"]["telemetry"] == duplicates  # resends after a lost PUBACK
    return len(batch_seqs)


def assert_accounting_exact(acc: Accounting, total: int) -> None:
    """The gateway's accounting identity, exactly: every reading in was delivered; nothing filtered,
    dropped, restored or left over."""
    assert acc.readings_in == total
    assert acc.restored == 0
    assert dict(acc.filtered) == {} and dict(acc.dropped) == {}
    assert acc.balance() == 0
    assert acc.delivered + sum(acc.filtered.values()) + sum(acc.dropped.values()) == acc.readings_in


async def stop_and_settle(gw: GatewayService, pub: PacedDevices, stored: Callable[[], int]) -> int:
    """Stop the devices, wait until the gateway has delivered every reading they got a PUBACK for and
    the sink has stored them (``stored``: how many it has), check the gateway's accounting identity;
    the number of readings."""
    await pub.stop()
    total = pub.acked_total
    assert pub.unacked == 0 and total == pub.published_total, "the local broker never went away"
    acc = gw.accounting
    await eventually(lambda: acc.delivered == total and acc.buffered == 0 and acc.pending == 0,
                     timeout=30, message=lambda: f"{total} published, gateway: {gw.snapshot()}")
    await eventually(lambda: stored() == total, timeout=30, message=lambda: f"sink has {stored()} of {total}")
    assert_accounting_exact(acc, total)
    return total


@asynccontextmanager
async def running_sink(db: Path | str, urls: Sequence[str], *, connect_timeout_s: float = 2.0,
                       **settings: Any) -> AsyncIterator[Sink]:
    """The sink storing into ``db`` on the event loop, subscribed when this returns (fast reconnects:
    brokers are killed under it); stopped and its database closed afterwards."""
    store = open_sink_store(db)
    try:
        async with serving(Sink(store, urls, backoff=DecorrelatedJitter(0.05, 0.3),
                                connect_timeout_s=connect_timeout_s, **settings), ready_s=20) as sink:
            yield sink
    finally:
        store.close()


@asynccontextmanager
async def serving(sink: Sink, ready_s: float) -> AsyncIterator[Sink]:
    """Run ``sink`` on the event loop until the block ends; subscribed (ready) when it starts."""
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        await asyncio.wait_for(sink.ready.wait(), ready_s)
        yield sink
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
