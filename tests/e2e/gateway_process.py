"""Helpers for tests that run the gateway as a real process: its config file and its /metrics."""

from __future__ import annotations

import urllib.request
from pathlib import Path


def write_config(tmp: Path, local_port: int, metrics_port: int, cloud_url: str, *, max_count: int,
                 max_age_s: float, log_level: str = "warning", extra: str = "") -> Path:
    """A gateway config in ``tmp`` (data dir ``tmp/data``) with the metrics endpoint on; ``extra``
    TOML is appended."""
    path = tmp / "gw.toml"
    path.write_text(f"""
[gateway]
id = "gw-test"
data_dir = "{tmp / 'data'}"
[local_broker]
listen = "127.0.0.1:{local_port}"
[uplink]
urls = ["{cloud_url}"]
backoff_base_s = 0.05
backoff_cap_s = 0.5
[batch]
max_count = {max_count}
max_age_s = {max_age_s}
[metrics]
listen = "127.0.0.1:{metrics_port}"
[log]
level = "{log_level}"
{extra}
""")
    return path


def metrics_text(port: int) -> str:
    """The gateway's /metrics page, or "" while the endpoint is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def scrape(port: int, name: str) -> float | None:
    """One unlabelled value from the gateway's /metrics, or None when absent."""
    for line in metrics_text(port).splitlines():
        if line.startswith((name + " ", name + "_total ")):
            return float(line.split()[-1])
    return None
