"""The Prometheus endpoint of a running gateway: every metric documented in docs/OPERATIONS.md and
carrying a real HELP text, every known reason exported at 0 before its first event, the latency
histograms filled by a command round trip and an alert, and a served snapshot that holds only plain
frozen data (nothing owned by the event loop)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path
from types import MappingProxyType
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from gateway.observe.metrics import KNOWN_LABELS, serve
from gateway.service import GatewayService
from tests.e2e.downlink_support import CloudOperator, sim_devices
from tests.e2e.harness import Devices, gateway_config, local_url, running_gateway, telemetry
from tests.support import Mosquitto, free_port

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"


def scrape_families(port: int) -> dict[str, Metric]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample_value(families: dict[str, Metric], sample_name: str, **labels: str) -> float | None:
    family = families.get(re.sub(r"_(total|bucket|count|sum)$", "", sample_name))
    for sample in family.samples if family else ():
        if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    return None


@asynccontextmanager
async def served_gateway(tmp_path: Path, mosquitto: Mosquitto, **sections: Any) -> AsyncIterator[
        tuple[GatewayService, int]]:
    port = free_port()
    cfg = gateway_config(tmp_path, mosquitto.url, metrics={"listen": f"127.0.0.1:{port}", "refresh_s": 0.05},
                         **sections)
    async with running_gateway(cfg) as gw:
        server = serve(gw.cfg.metrics, None, gw.board)
        try:
            yield gw, port
        finally:
            server.shutdown()


async def scrape_when(port: int, ready: Any, timeout: float = 30) -> dict[str, Metric]:
    """Scrape until ``ready(families)`` holds (the endpoint serves the snapshot of up to refresh_s ago)."""
    latest: dict[str, Metric] = {}

    async def check() -> bool:
        nonlocal latest
        latest = await asyncio.to_thread(scrape_families, port)
        return bool(ready(latest))

    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"metrics never got ready: {sorted(latest)}"
        await asyncio.sleep(0.05)
    return latest


def documented_metrics() -> set[str]:
    """Metric families in the reference table of docs/OPERATIONS.md (rows starting with `edge_...`,
    written as scraped: counters with ``_total``)."""
    names = re.findall(r"^\| `(edge_[a-z_]+)", OPERATIONS.read_text(), flags=re.MULTILINE)
    return {name.removesuffix("_total") for name in names}


async def test_every_metric_is_documented_has_help_and_known_reasons_start_at_zero(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with served_gateway(tmp_path, mosquitto) as (gw, port):
        families = await scrape_when(port, lambda f: sample_value(f, "edge_uplink_connected") == 1)
        exported = {name for name in families if name.startswith("edge_")}
        assert exported == documented_metrics(), "docs/OPERATIONS.md lists exactly the exported metrics"
        for name in exported:
            help_text = families[name].documentation
            assert len(help_text) > 15 and not help_text.startswith("gateway counter"), (name, help_text)
        for family_name, values in KNOWN_LABELS.items():
            family = families[family_name]
            label = "status" if family_name in ("edge_commands_answered", "edge_config_pushes") else "reason"
            seen = {s.labels[label]: s.value for s in family.samples if s.name == family_name + "_total"}
            assert set(values) <= set(seen), (family_name, set(values) - set(seen))
            assert all(seen[v] == 0 for v in values if family_name != "edge_commands_answered"), (family_name, seen)
        assert families["edge_build_info"].samples[0].labels["version"] == version("edge-mqtt-gateway")
        assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= set(families)
        assert sample_value(families, "edge_buffer_budget_bytes", lane="telemetry") == gw.cfg.buffer.telemetry.max_bytes
        assert sample_value(families, "edge_uplink_offline_seconds") == 0
        assert sample_value(families, "edge_connected_clients") == 0

        devices = await Devices.connect(local_url(gw))
        try:
            await scrape_when(port, lambda f: sample_value(f, "edge_connected_clients") == 1)
        finally:
            await devices.close()
        await scrape_when(port, lambda f: sample_value(f, "edge_connected_clients") == 0)

        mosquitto.stop()
        try:
            down = await scrape_when(port, lambda f: (sample_value(f, "edge_uplink_offline_seconds") or 0) > 0)
            assert sample_value(down, "edge_uplink_connected") == 0
        finally:
            mosquitto.start()


async def test_command_round_trip_and_alert_fill_the_latency_histograms(
        tmp_path: Path, mosquitto: Mosquitto, operator: CloudOperator) -> None:
    rules: Any = [{"name": "overheat", "metrics": "temperature", "alert": {"max": 80.0}}]
    async with served_gateway(tmp_path, mosquitto, rules=rules) as (gw, port):
        before = await scrape_when(port, lambda f: "edge_command_round_trip_seconds" in f)
        assert sample_value(before, "edge_command_round_trip_seconds_count") == 0
        assert sample_value(before, "edge_alert_delivery_seconds_count") == 0
        await operator.until_subscribed()
        async with sim_devices(gw):
            await operator.send("dev-0001/ping", {"id": "lat-1"})
            ping = await operator.answer("lat-1")
        devices = await Devices.connect(local_url(gw))
        try:
            await devices.publish_all([telemetry("hot-1", 1, int(time.time() * 1000), temperature=95.0)])
        finally:
            await devices.close()

        def filled(f: dict[str, Metric]) -> bool:
            return (sample_value(f, "edge_command_round_trip_seconds_count") == 1
                    and sample_value(f, "edge_alert_delivery_seconds_count") == 1)

        after = await scrape_when(port, filled)
        rtt_sum = sample_value(after, "edge_command_round_trip_seconds_sum")
        assert rtt_sum is not None and abs(rtt_sum - ping["rtt_ms"] / 1000) < 1e-3
        assert sample_value(after, "edge_command_round_trip_seconds_bucket", le="+Inf") == 1
        assert sample_value(after, "edge_alert_delivery_seconds_bucket", le="+Inf") == 1
        assert sample_value(after, "edge_control_records_total", kind="alert") == 1

        served = gw.board.latest()
        assert served is not None
        assert_plain_frozen(served[1], "snapshot")


def assert_plain_frozen(value: Any, path: str) -> None:
    """Only immutable plain data: the HTTP thread can never reach an object the loop owns."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        frozen = type(value).__dataclass_params__.frozen  # type: ignore[attr-defined]
        assert frozen, f"{path}: {type(value).__name__} is not frozen"
        for f in dataclasses.fields(value):
            assert_plain_frozen(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, MappingProxyType):
        for key, item in value.items():
            assert isinstance(key, str), f"{path}: key {key!r}"
            assert_plain_frozen(item, f"{path}.{key}")
    elif isinstance(value, tuple):
        for i, item in enumerate(value):
            assert_plain_frozen(item, f"{path}[{i}]")
    else:
        assert value is None or type(value) in (str, int, float, bool), f"{path}: {type(value).__name__}"
        json.dumps(value)
