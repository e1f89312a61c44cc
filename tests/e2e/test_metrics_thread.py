"""The Prometheus endpoint runs in its own thread and reads only the snapshot the event loop
published: scraped in a tight loop while devices publish and a backlog drains, every scrape is
answered, internally consistent (the accounting identity holds within it) and never goes back."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.observe.metrics import serve
from gateway.observe.snapshot import AccountingBlock
from gateway.service import GatewayService
from tests.e2e.harness import PacedDevices, gateway_config, local_url, running_gateway
from tests.support import Mosquitto, eventually, free_port

COUNTERS = ("edge_readings_received", "edge_readings_delivered", "edge_records_written{}", "edge_records_delivered{}",
            "edge_messages_received")


def _values(text: str) -> dict[str, float]:
    """Unlabelled samples by name; labelled ones summed per family (``name{}``)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = sample.name.removesuffix("_total") + ("{}" if sample.labels else "")
            out[key] = out.get(key, 0.0) + sample.value
    return out


class Scraper(threading.Thread):
    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.stop = threading.Event()
        self.scrapes = 0
        self.errors: list[str] = []
        self.during_drain = 0  # scrapes that saw a backlog draining

    def run(self) -> None:
        last: dict[str, float] = {}
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=10) as resp:
                    values = _values(resp.read().decode())
            except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
                self.errors.append(f"scrape failed: {exc!r}")
                continue
            if "edge_readings_received" not in values:
                continue  # before the first snapshot
            self.scrapes += 1
            balance = (values["edge_readings_received"] + values["edge_readings_restored"]
                       - values["edge_readings_delivered"] - values.get("edge_readings_filtered{}", 0.0)
                       - values.get("edge_readings_dropped{}", 0.0) - values["edge_readings_buffered"]
                       - values["edge_readings_pending"])
            if balance != 0:
                self.errors.append(f"identity off by {balance} in one scrape: {values}")
            for name in COUNTERS:
                if values[name] < last.get(name, 0.0):
                    self.errors.append(f"{name} went back from {last[name]} to {values[name]}")
            if values["edge_backlog_drain_readings_per_second"] > 0:
                self.during_drain += 1
            if values["edge_internal_errors"]:
                self.errors.append(f"internal errors: {values['edge_internal_errors']}")
            last = values


@asynccontextmanager
async def scraping(gw: GatewayService, port: int) -> AsyncIterator[Scraper]:
    """The gateway's /metrics endpoint served on ``port`` and scraped in a tight loop meanwhile."""
    server = serve(gw.cfg.metrics, None, gw.board)
    scraper = Scraper(port)
    scraper.start()
    try:
        yield scraper
    finally:
        scraper.stop.set()
        await asyncio.to_thread(scraper.join, 10)
        server.shutdown()


async def test_metrics_scraped_in_a_tight_loop_under_load(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    cfg = gateway_config(tmp_path, mosquitto.url, batch={"max_count": 20, "max_age_s": 0.05},
                         metrics={"listen": f"127.0.0.1:{port}", "refresh_s": 0.01})
    mosquitto.stop()  # a backlog builds up first, then drains while the endpoint is scraped
    async with running_gateway(cfg) as gw, scraping(gw, port) as scraper:
        devices = PacedDevices(local_url(gw), devices=20, rate_hz=40)
        devices.start()
        await eventually(lambda: gw.buffer.readings("telemetry") >= 1000, timeout=30)
        mosquitto.start()
        await eventually(lambda: gw.forwarder.backlog_rate.rate() > 0 and scraper.during_drain >= 5, timeout=30)
        await devices.stop()
        await eventually(lambda: gw.accounting.delivered == devices.acked_total, timeout=30)
        final = scraper.scrapes
        await eventually(lambda: scraper.scrapes > final + 2)  # scrapes of the settled state too
    assert not scraper.errors, scraper.errors[:5]
    assert scraper.scrapes > 50
    assert gw.accounting.balance() == 0 and gw.accounting.delivered == devices.acked_total
    print(f"{scraper.scrapes} scrapes, {scraper.during_drain} during the drain, {devices.acked_total} readings")


def _off_by(acc: AccountingBlock) -> int:
    return acc.readings_in + acc.restored - (acc.delivered + sum(acc.filtered.values()) + sum(acc.dropped.values())
                                             + acc.buffered + acc.pending)


async def test_every_scrape_balances_while_the_buffer_drops_on_a_full_disk(tmp_path: Path) -> None:
    """A long outage on a disk below its headroom: every new batch replaces the oldest (``disk_full``).
    A snapshot built at every turn of the event loop, and every /metrics scrape, balances exactly."""
    port = free_port()
    cfg = gateway_config(tmp_path, f"mqtt://127.0.0.1:{free_port()}",  # nobody listens: the uplink is down
                         batch={"max_count": 7, "max_age_s": 0.02},
                         buffer={"telemetry": {"max_bytes": 40_000}, "min_free_bytes": 10**15},
                         metrics={"listen": f"127.0.0.1:{port}", "refresh_s": 0.005})
    snapshots, off = 0, []
    async with running_gateway(cfg) as gw, scraping(gw, port) as scraper:
        devices = PacedDevices(local_url(gw), devices=20, rate_hz=50)
        devices.start()
        deadline = time.monotonic() + 120
        while gw.accounting.dropped["disk_full"] < 2000 or scraper.scrapes < 100:
            acc = gw.typed_snapshot().accounting
            snapshots += 1
            if _off_by(acc):
                off.append(acc)
            await asyncio.sleep(0)
            assert time.monotonic() < deadline, f"too few drops or scrapes: {dict(gw.accounting.dropped)}"
        await devices.stop()
    assert not off, off[:3]
    assert not scraper.errors, scraper.errors[:5]
    assert gw.accounting.balance() == 0
    print(f"{snapshots} snapshots, {scraper.scrapes} scrapes, dropped {dict(gw.accounting.dropped)}")
