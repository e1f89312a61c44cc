"""The gateway process with a large backlog on disk: it accepts devices before the backlog is counted,
a kill -9 while it is being counted loses nothing and reuses no sequence number, and a backlog
whose records' metadata alone is several times the process' memory headroom (an address-space
cap) opens, drains in order and completes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bridge.protocol.model import Lane, Reading
from bridge.protocol.topics import DEFAULT_PREFIX, CloudTopics
from gateway.observe.accounting import Accounting
from gateway.store.buffer import Budget, DiskBuffer
from gateway.store.lanes import LaneWriter
from tests.e2e.gateway_process import GatewayProcess, write_config
from tests.e2e.harness import CloudCollector, Devices, device_seq, telemetry
from tests.support import Mosquitto, eventually, free_port

BUDGETS: dict[Lane, Budget] = {"telemetry": Budget(1 << 40), "control": Budget(1 << 30)}


def prefill(buffer_dir: Path, records: int, readings: int = 1, prefix: str = DEFAULT_PREFIX) -> None:
    """``records`` telemetry batches of device ``old`` (device seqs 1, 2, ...), written many per
    transaction, as an earlier run that lost its uplink would have left them (topics under
    ``prefix``)."""
    buf = DiskBuffer(buffer_dir, BUDGETS, sync="normal", write_behind_s=3600)
    buf.open()
    buf.set_link_up(True)
    lanes = LaneWriter(buf, CloudTopics("gw-test", prefix), Accounting(), compression="none", level=0,
                       on_written=lambda: None)
    n = 0
    for i in range(records):
        batch = []
        for _ in range(readings):
            n += 1
            batch.append(Reading("old", "temperature", 1_700_000_000_000 + n * 1000, float(n), n))
        lanes.write_batch(batch)
        if i % 1000 == 999:
            buf.persist_due(force=True)
    buf.set_link_up(False)
    buf.close()


def start(tmp: Path, cloud: Mosquitto, *, memory_cap: int = 0, prefix: str = DEFAULT_PREFIX
          ) -> tuple[GatewayProcess, int]:
    local = free_port()
    config = write_config(tmp, local, free_port(), cloud.url, max_count=100, max_age_s=0.1, log_level="info",
                          extra=f"[buffer]\ntelemetry = {{ max_bytes = {1 << 40}, max_age_s = 0.0 }}\n"
                                f"[topics]\ncloud_prefix = \"{prefix}\"\n")
    return GatewayProcess(config, local, None, memory_cap=memory_cap), local


def wait_accepting(gw: GatewayProcess, timeout: float = 60) -> float:
    """Seconds until the local broker answers a CONNECT (polled without pause: the point is how soon)."""
    began = time.monotonic()
    while not gw._ready():
        assert time.monotonic() - began < timeout, gw.log()
    return time.monotonic() - began


@pytest.mark.timeout(900)
async def test_kill_9_while_the_backlog_is_counted_loses_nothing_and_reuses_no_seq(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    records = 10_000
    prefill(tmp_path / "data" / "buffer", records)
    collector = CloudCollector(mosquitto.url)
    await collector.connect()
    try:
        gw, _ = start(tmp_path, mosquitto)
        with gw:
            wait_accepting(gw)
            gw.kill()
        assert "backlog counted" not in gw.log(), "the kill came after the count: make the backlog larger"
        assert "buffer reopened with" not in gw.log()
        gw, local = start(tmp_path, mosquitto)
        with gw:
            wait_accepting(gw)
            devices = await Devices.connect(f"mqtt://127.0.0.1:{local}")
            await devices.publish_all([telemetry("new", 1, int(time.time() * 1000), t=1.0)])
            await devices.close()

            def complete() -> bool:
                seen = {b.seq for b in collector.data.batches}
                return len(seen) > records and any(r.device == "new" for b in collector.data.batches
                                                   for r in b.readings)

            await eventually(complete, timeout=300, message=lambda: f"{len({b.seq for b in collector.data.batches})} "
                             f"batches, max seq {max((b.seq for b in collector.data.batches), default=0)}:\n{gw.log()}")
            await eventually(lambda: "backlog counted" in gw.log(), message=gw.log)
        by_seq: dict[int, set[bytes]] = {}
        for batch in collector.data.batches:
            by_seq.setdefault(batch.seq, set()).add(repr([tuple(r) for r in batch.readings]).encode())
        assert all(len(contents) == 1 for contents in by_seq.values())  # a seq always names one batch
        batches = collector.data.unique_batches().values()
        old = sorted(device_seq(r) for b in batches for r in b.readings if r.device == "old")
        assert old == list(range(1, records + 1))  # nothing lost, each once
        new = [b.seq for b in collector.data.unique_batches().values() if any(r.device == "new" for r in b.readings)]
        assert new and min(new) > records  # never a number the backlog had
        assert "ERROR" not in gw.log()
    finally:
        await collector.close()


def peak_address_space(gw: GatewayProcess) -> int:
    for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmPeak:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmPeak")


# Each record's metadata carries its topic (twice: in its key and on its own), so under this prefix a
# record held in memory costs about 7 KB: a backlog of 12,000 short batches (quick to build and to
# drain) holds ~80 MB of metadata, several times the headroom the cap leaves.
LONG_PREFIX = "site/" + "x" * 3000 + "/edge/{gateway_id}"
HEADROOM = 16 * 1024 * 1024


@pytest.mark.timeout(600)
async def test_a_backlog_whose_metadata_is_beyond_the_memory_cap_opens_drains_in_order_and_completes(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    gw, _ = start(empty, mosquitto, memory_cap=1 << 40, prefix=LONG_PREFIX)  # no real cap, the same malloc settings
    with gw:
        wait_accepting(gw)
        baseline = peak_address_space(gw)
    # the cap allows 16 MB of address space more than the empty gateway ever used (its peak, which
    # includes a thread's malloc arena being set up); holding every record's metadata needs far more
    records = 12_000
    cap = baseline + HEADROOM
    prefill(tmp_path / "data" / "buffer", records, prefix=LONG_PREFIX)
    prefix = CloudTopics("gw-test", LONG_PREFIX).prefix
    assert records * 2 * len(prefix) > 4 * HEADROOM
    collector = CloudCollector(mosquitto.url, prefix=prefix)
    await collector.connect()
    try:
        gw, _ = start(tmp_path, mosquitto, memory_cap=cap, prefix=LONG_PREFIX)
        with gw:
            wait_accepting(gw)
            await eventually(lambda: len(collector.data.batches) >= records, timeout=300, message=gw.log)
            await eventually(lambda: "backlog counted" in gw.log(), message=gw.log)
            gw.alive()
        seqs = [b.seq for b in collector.data.batches]
        assert seqs == sorted(seqs) and sorted(set(seqs)) == list(range(1, records + 1))  # in order, complete
        assert "MemoryError" not in gw.log() and "ERROR" not in gw.log()
    finally:
        await collector.close()
