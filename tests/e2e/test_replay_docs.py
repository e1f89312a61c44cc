"""docs/device-sim.md's replay example against a running gateway: the documented CSV replayed as
documented is accepted (no reading rejected), the summary counts readings and messages, and an
old recording without --restamp gets a warning."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from tests.e2e.harness import gateway_config, local_url, running_gateway
from tests.support import Mosquitto, eventually

DOC = Path(__file__).resolve().parents[2] / "docs" / "device-sim.md"
DEVICE_SIM = Path(sys.executable).parent / "device-sim"


def documented_csv() -> str:
    m = re.search(r"```csv\n(device,metric,ts,value\n.*?)```", DOC.read_text(), re.S)
    assert m, "docs/device-sim.md has no replay CSV example"
    return m.group(1)


async def replay(port: int, csv: Path, *extra: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(DEVICE_SIM), "replay", str(csv), "-p", str(port), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_documented_replay_is_accepted_by_the_gateway(tmp_path: Path, mosquitto: Mosquitto) -> None:
    csv = tmp_path / "readings.csv"
    csv.write_text(documented_csv())
    async with running_gateway(gateway_config(tmp_path, mosquitto.url)) as gw:
        port = int(local_url(gw).rsplit(":", 1)[1])
        code, out, err = await replay(port, csv, "--fast", "--restamp")
        assert code == 0, err
        assert out.strip().startswith("replayed 3 readings in 2 messages: 2 acknowledged, 0 failed"), out
        assert "warning" not in err
        await eventually(lambda: gw.snapshot()["accounting"]["readings_in"] == 3,
                         message=lambda: str(gw.snapshot()["accounting"]))
        assert not any(gw.snapshot()["rejects"].values())
        # the recorded (2023) timestamps: the broker acknowledges, the gateway rejects, replay warns
        code, out, err = await replay(port, csv, "--fast")
        assert code == 0 and "0 failed" in out and "ts_out_of_window" in err and "--restamp" in err
        await eventually(lambda: gw.snapshot()["rejects"].get("ts_out_of_window", 0) == 2,
                         message=lambda: str(gw.snapshot()["rejects"]))
