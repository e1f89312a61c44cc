"""The shipped monitoring files match what a running gateway exports: every query of the Grafana
dashboard and every expression of the Prometheus alert rules names a series scraped from a real
gateway's /metrics; the Prometheus config scrapes the compose gateway's metrics port and loads the
rules; the Grafana provisioning points at the dashboard and the datasource it uses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import tomllib
import yaml

from gateway.observe.accounting import DROP_REASONS
from tests.e2e.test_metrics_names import sample_value, scrape_when, served_gateway
from tests.support import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "conf" / "grafana" / "dashboards" / "edge-gateway.json"
RULES = ROOT / "conf" / "prometheus" / "edge-gateway.rules.yml"
PROMETHEUS = ROOT / "conf" / "prometheus" / "prometheus.yml"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
# series the gateway exports (its own and the process/platform collectors'); `up` is Prometheus's own
OURS = re.compile(r"\b((?:edge|process|python)_[a-z0-9_]+)\b")


async def test_dashboard_and_alert_rules_name_series_a_running_gateway_exports(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with served_gateway(tmp_path, mosquitto) as (_gw, port):
        families = await scrape_when(port, lambda f: sample_value(f, "edge_uplink_connected") == 1)
    exported: set[str] = set()
    for family in families.values():
        exported.add(family.name)
        exported.update(sample.name for sample in family.samples)
    assert {"edge_readings_received_total", "edge_command_round_trip_seconds_bucket",
            "process_resident_memory_bytes"} <= exported
    check_dashboard(exported)
    check_alert_rules(exported)


def series_in(expr: str) -> set[str]:
    return set(OURS.findall(expr))


def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return queries


def check_dashboard(exported: set[str]) -> None:
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], f"panel {panel['title']!r} has no query"
            assert panel["datasource"]["uid"] == "prometheus"
    queries = dashboard_queries()
    for expr in queries:
        names = series_in(expr)
        assert names, f"query names no gateway series: {expr}"
        assert names <= exported, f"{expr}: not exported: {names - exported}"
    shown = set().union(*map(series_in, queries))
    for topic in ("edge_buffer_readings", "edge_backlog_drain_readings_per_second", "edge_backlog_drain_eta_seconds",
                  "edge_readings_dropped_total", "edge_uplink_connected", "edge_uplink_offline_seconds",
                  "edge_command_round_trip_seconds_bucket", "edge_alert_delivery_seconds_bucket",
                  "edge_connected_clients"):
        assert topic in shown, f"the dashboard does not show {topic}"


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def check_alert_rules(exported: set[str]) -> None:
    rules = alert_rules()
    docs = OPERATIONS.read_text()
    assert len(rules) >= 10
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule
        assert rule["annotations"]["summary"], rule
        names = series_in(rule["expr"])
        assert names or rule["alert"] == "EdgeGatewayDown", rule
        assert names <= exported, f"{rule['alert']}: not exported: {names - exported}"
        assert f"`{rule['alert']}`" in docs, f"{rule['alert']} is not documented in OPERATIONS.md"


def test_the_readings_lost_rule_covers_every_non_input_drop_reason() -> None:
    (lost,) = [r for r in alert_rules() if r["alert"] == "EdgeReadingsLost"]
    match = re.search(r'reason=~"([^"]+)"', lost["expr"])
    assert match is not None
    assert set(match.group(1).split("|")) == set(DROP_REASONS)


def test_prometheus_scrapes_the_compose_gateway_and_loads_the_rules() -> None:
    prom = yaml.safe_load(PROMETHEUS.read_text())
    assert prom["rule_files"] == [f"/etc/prometheus/{RULES.name}"]  # conf/prometheus is mounted there
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "edge-gateway"]
    listen = tomllib.loads((ROOT / "conf" / "compose" / "gateway.toml").read_text())["metrics"]["listen"]
    assert job["static_configs"][0]["targets"] == [f"gateway:{listen.rsplit(':', 1)[1]}"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "./conf/prometheus:/etc/prometheus:ro" in compose["services"]["prometheus"]["volumes"]


def test_grafana_provisioning_points_at_the_dashboard_and_datasource() -> None:
    provisioning = ROOT / "conf" / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert (source["uid"], source["url"]) == ("prometheus", "http://prometheus:9090")
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "edge-gateway.yml").read_text())["providers"]
    volumes = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]["volumes"]
    assert f"./conf/grafana/dashboards:{provider['options']['path']}:ro" in volumes
    assert "./conf/grafana/provisioning:/etc/grafana/provisioning:ro" in volumes
