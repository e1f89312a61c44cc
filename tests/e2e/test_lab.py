"""README quick-start command 1: `edge-gateway lab` runs the whole system and ends with a report."""

from __future__ import annotations

import json
import subprocess
import sys


def test_lab_runs_end_to_end_and_reports() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "gateway", "lab", "--duration", "4", "--devices", "4", "--rate-hz", "5",
         "--local-port", "0", "--cloud-port", "0", "--json"],
        capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    gw = out["gateway"]
    assert out["ok"] is True
    assert gw["readings_in"] >= 4 * 5 * 3 * 2  # 4 devices x 5 Hz x 3 metrics, at least 2 s of data
    assert gw["readings_in"] == gw["delivered"] + sum(gw["filtered"].values()) + sum(gw["dropped"].values())
    assert gw["buffered"] == 0 and gw["pending"] == 0
    assert out["sink"]["readings"] == gw["delivered"]
    assert out["sink"]["duplicates_dropped"] == 0 and out["sink"]["missing_seqs"] == 0
