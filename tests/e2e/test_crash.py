"""kill -9 of the gateway process, several times, while devices publish and the cloud broker is
down (so a backlog piles up on disk); each time it is restarted on the same data directory. At the
end the cloud comes up and everything drains to the project's sink.

What must hold (OPERATIONS.md, "Loss windows"):

- the buffer reopens cleanly every time: the process comes up, reports what it restored, and logs
  no error;
- nothing already on disk is lost, changed or resent out of order: every batch seen on disk after
  a kill reaches the sink with the same content, in sequence order, flagged as replay;
- a batch sequence number is never handed out twice for the lane;
- the only readings lost are the ones not yet written to disk when the process died: the open
  batch (``batch.max_age_s`` of data) and the ingest queue. The loss is made visible as per-device
  gaps in the device seqs at the sink; every gap must sit just before a kill and be no longer than
  ``rate x (batch.max_age_s + margin)``.

The kill points come from a seeded RNG as a number of readings the devices got acknowledged since
the process came up, so the phase of each kill against the batch timer is arbitrary.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge.cloud.sink import Sink
from bridge.cloud.sink_store import SinkStore
from bridge.mqtt.backoff import DecorrelatedJitter
from bridge.protocol.codec import decode_batch
from gateway.store.buffer import Budget, DiskBuffer
from tests.e2e.gateway_process import GatewayProcess, metrics_text, write_config
from tests.e2e.harness import CloudCollector, PacedDevices
from tests.support import Mosquitto, eventually, free_port

SEED = 7
MAX_AGE_S = 0.5  # batch.max_age_s: the documented kill -9 window
MARGIN_S = 1.0  # scheduling slack on a busy 2-core machine (processor tick, fsync, ingest queue)


async def gateway_run(config: Path, log: Path, local_port: int, metrics_port: int) -> GatewayProcess:
    """A gateway process that has come up: serving /metrics, answering MQTT, and saying it runs."""
    run = GatewayProcess(config, local_port, metrics_port, log=log)
    await run.ready()
    await eventually(lambda: "gateway gw-test running" in run.log(), message=run.log)
    return run


@dataclass
class DiskState:
    """What the buffer holds, read with the gateway's own adapter while no gateway runs."""

    batches: dict[int, tuple[bytes, list[tuple[str, int]]]] = field(default_factory=dict)  # seq -> payload, readings
    next_seq: int = 1

    @property
    def readings(self) -> int:
        return sum(len(r) for _, r in self.batches.values())


def read_buffer(data_dir: Path) -> DiskState:
    buf = DiskBuffer(data_dir / "buffer", {"telemetry": Budget(10**12), "control": Budget(10**12)})
    buf.open()
    try:
        state = DiskState(next_seq=buf.next_seq("telemetry"))
        for rec in buf.take("telemetry", 10**9):
            readings = [(r.device, r.seq) for r in decode_batch(rec.payload).readings if r.seq is not None]
            state.batches[rec.seq] = (rec.payload, readings)
        assert buf.readings("telemetry") == state.readings
    finally:
        buf.close()  # nothing acknowledged: the records stay
    return state


def assert_clean_log(run: GatewayProcess, restored: int) -> None:
    text = run.log()
    bad = [line for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line or "Traceback" in line]
    assert not bad, "\n".join(bad)
    if restored:
        assert "buffer reopened with" in text, text


async def reach_acked(pub: PacedDevices, target: int) -> None:
    await eventually(lambda: pub.acked_total >= target, timeout=30,
                     message=lambda: f"devices stalled at {pub.acked_total} acknowledged readings")


@dataclass
class Kill:
    at: float  # time.monotonic()
    run_started: float
    written: set[tuple[str, int]]  # readings this run put on disk


async def test_gateway_killed_with_a_backlog_loses_only_the_open_batch(
    tmp_path: Path, persistent_mosquitto: Mosquitto
) -> None:
    await crash_cycle(tmp_path, persistent_mosquitto, kills=3, devices=10, rate_hz=20, seed=SEED)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_gateway_killed_many_times(tmp_path: Path, persistent_mosquitto: Mosquitto) -> None:
    await crash_cycle(tmp_path, persistent_mosquitto, kills=12, devices=40, rate_hz=10, seed=SEED + 1)


async def crash_cycle(tmp: Path, cloud: Mosquitto, *, kills: int, devices: int, rate_hz: float,
                      seed: int) -> None:
    rng = random.Random(seed)
    local_port, metrics_port = free_port(), free_port()
    config = write_config(tmp, local_port, metrics_port, cloud.url, max_count=1000, max_age_s=MAX_AGE_S,
                          log_level="info")
    pub = PacedDevices(f"mqtt://127.0.0.1:{local_port}", devices, rate_hz)
    disk = DiskState()
    history: list[Kill] = []
    # The sink (and a raw collector that keeps every copy) subscribe on persistent sessions, then the
    # cloud goes down for the whole crash phase; they reconnect by themselves when it comes back.
    db = tmp / "sink.sqlite"
    store = SinkStore(db)
    sink = Sink(store, [cloud.url], backoff=DecorrelatedJitter(0.05, 0.3), connect_timeout_s=2.0)
    raw = CloudCollector(cloud.url)
    sink_stop = asyncio.Event()
    sink_task = asyncio.create_task(sink.run(sink_stop))
    try:
        await asyncio.wait_for(sink.ready.wait(), 10)
        await raw.connect()
        await asyncio.to_thread(cloud.stop)  # a clean stop: the broker keeps both sessions

        for k in range(kills):
            started = time.monotonic()
            run = await gateway_run(config, tmp / f"gw-{k}.log", local_port, metrics_port)
            assert run.metric("edge_readings_restored") == disk.readings, "restored = what was on disk"
            if k == 0:
                pub.start()
            target = pub.acked_total + rng.randint(100, 800)
            await reach_acked(pub, target)
            await asyncio.to_thread(run.kill)  # off the loop: the devices' PUBACKs keep their times
            killed_at = time.monotonic()
            assert_clean_log(run, disk.readings)
            after = await asyncio.to_thread(read_buffer, tmp / "data")
            # Nothing already on disk was lost or changed; new batches continue the sequence, no holes.
            for seq, (payload, _) in disk.batches.items():
                assert after.batches.get(seq, (b"",))[0] == payload, f"batch {seq} changed or vanished"
            assert sorted(after.batches) == list(range(1, after.next_seq))
            new = [r for seq, (_, rs) in after.batches.items() if seq not in disk.batches for r in rs]
            history.append(Kill(killed_at, started, set(new)))
            disk = after

        # The last start; then the cloud comes up and everything drains while the devices keep publishing.
        run = await gateway_run(config, tmp / "gw-final.log", local_port, metrics_port)
        assert run.metric("edge_readings_restored") == disk.readings
        await asyncio.to_thread(cloud.start)
        target = pub.acked_total + rng.randint(100, 400)
        await reach_acked(pub, target)
        await pub.stop()
        assert pub.unacked == sum(p - len(pub.acked[d]) for d, p in pub.published.items())

        def drained() -> bool:
            delivered, readings_in = run.metric("edge_readings_delivered"), run.metric("edge_readings_received")
            return (delivered is not None and readings_in is not None
                    and delivered == readings_in + disk.readings
                    and run.metric("edge_readings_buffered") == 0 and run.metric("edge_readings_pending") == 0)

        await eventually(drained, timeout=60, message=lambda: run.log()[-3000:])
        final_in = int(run.metric("edge_readings_received") or 0)
        dropped = [line for line in metrics_text(metrics_port).splitlines()
                   if line.startswith("edge_readings_dropped_total{")]
        assert dropped and all(float(line.split()[-1]) == 0 for line in dropped), "nothing dropped in the final run"
        assert run.terminate() == 0
        assert_clean_log(run, disk.readings)
        await eventually(lambda: sink.counters.readings == disk.readings + final_in, timeout=30,
                         message=lambda: f"sink {sink.counters.readings} of {disk.readings + final_in}")
        await eventually(lambda: len(raw.data.unique_batches()) == sink.counters.batches, timeout=30)
        await raw.close()
    finally:
        sink_stop.set()
        await asyncio.wait_for(sink_task, 10)
        store.close()

    check_delivery(db, raw.data.batches, disk, sink.counters.duplicates)
    check_loss_windows(db, pub, history, rate_hz)


def check_delivery(db: Path, copies: list[Any], disk: DiskState, duplicates: int) -> None:
    """Batches on disk reached the cloud unchanged, in order, as replay; seqs were never reused."""
    first_arrival: list[int] = []
    seen: dict[int, list[tuple[str, int]]] = {}
    for batch in copies:
        readings = [(r.device, r.seq) for r in batch.readings]
        if batch.seq in seen:
            assert seen[batch.seq] == readings, f"two different batches carry seq {batch.seq}"
            continue
        seen[batch.seq] = readings
        first_arrival.append(batch.seq)
        if batch.seq in disk.batches:
            assert batch.replay, f"backlog batch {batch.seq} not flagged as replay"
            assert readings == disk.batches[batch.seq][1], f"batch {batch.seq} differs from what was on disk"
    assert first_arrival == sorted(first_arrival), "batches sent out of order"
    assert set(disk.batches) <= set(seen), "a batch that was on disk never reached the cloud"
    assert min(s for s in seen if s not in disk.batches) == disk.next_seq, "sequence continues after the backlog"
    # The cloud was up for the whole final run: nothing needed a resend, so the sink dropped nothing.
    resends = len(copies) - len(seen)
    assert duplicates == resends == 0
    with sqlite3.connect(db) as con:
        ledger = [s for (s,) in con.execute(
            "SELECT seq FROM batches WHERE gateway = 'gw-test' AND lane = 'telemetry' ORDER BY seq")]
    assert ledger == sorted(seen) == list(range(1, len(seen) + 1))


def check_loss_windows(db: Path, pub: PacedDevices, history: list[Kill], rate_hz: float) -> None:
    """Every acknowledged reading missing at the sink was lost by a kill, just before it, within the window."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT device, seq FROM readings WHERE gateway = 'gw-test' "
                           "ORDER BY batch_seq, rowid").fetchall()
    at_sink: dict[str, list[int]] = {}
    for device, seq in rows:
        at_sink.setdefault(device, []).append(seq)
    bound = int(rate_hz * (MAX_AGE_S + MARGIN_S)) + 1  # readings per device per kill
    lost_per_kill: Counter[int] = Counter()
    worst_gap: Counter[int] = Counter()
    oldest_lost: dict[int, float] = {}
    for device, acked in pub.acked.items():
        seqs = at_sink.get(device, [])
        assert seqs == sorted(set(seqs)), f"{device}: out of order or duplicated at the sink"
        assert set(seqs) <= set(range(1, pub.published[device] + 1)), f"{device}: a reading nobody published"
        missing = sorted(set(acked) - set(seqs))
        per_kill: Counter[int] = Counter()
        for seq in missing:
            t, connected = acked[seq], pub.connected_at[pub.acked_on[device][seq] - 1]
            # The run it was lost in is the one the device's connection went to.
            k = next((i for i, kill in enumerate(history) if kill.run_started <= connected <= kill.at), None)
            assert k is not None, f"{device} seq {seq} lost outside any killed run"
            kill = history[k]
            assert (device, seq) not in kill.written, f"{device} seq {seq} was on disk and still lost"
            assert kill.at - t <= MAX_AGE_S + MARGIN_S, (
                f"{device} seq {seq} acknowledged {kill.at - t:.2f}s before kill {k}: older than the open batch")
            per_kill[k] += 1
            oldest_lost[k] = max(oldest_lost.get(k, 0.0), kill.at - t)
        for k in per_kill:
            # What a kill loses is the tail of what the device sent to that run: the open batch.
            run_seqs = sorted(s for s, c in pub.acked_on[device].items()
                              if history[k].run_started <= pub.connected_at[c - 1] <= history[k].at)
            lost = [s for s in run_seqs if s in missing]
            assert lost == run_seqs[len(run_seqs) - len(lost):], f"{device}: kill {k} lost {lost}, not a tail"
        for k, n in per_kill.items():
            assert n <= bound, f"{device} lost {n} readings at kill {k} (bound {bound})"
            lost_per_kill[k] += n
            worst_gap[k] = max(worst_gap[k], n)
    # Each kill is visible: it lost the readings of its open batch (at least the last ones acknowledged).
    for k, kill in enumerate(history):
        acked_before = sum(1 for on in pub.acked_on.values() for c in on.values()
                           if kill.run_started <= pub.connected_at[c - 1] <= kill.at)
        assert acked_before - lost_per_kill[k] <= len(kill.written), "the sink got a reading the disk never had"
        print(f"kill {k}: {lost_per_kill[k]} readings lost over {len(pub.acked)} devices, worst device gap "
              f"{worst_gap[k]} (bound {bound}), oldest lost acknowledged {oldest_lost.get(k, 0.0):.2f}s before "
              f"the kill; {len(kill.written)} readings written to disk in that run")
