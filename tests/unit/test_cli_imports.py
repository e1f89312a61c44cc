"""``edge-gateway run`` loads only what running the gateway needs: not rich (terminal output), the
device commands or the cloud-side tools. Each module a long-running process imports costs memory
for its whole life (checked in a fresh interpreter: the test process has imported everything)."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from gateway.cli import main

RUN_PATH = "import gateway.cli, gateway.service, gateway.observe.metrics"


def test_the_run_path_does_not_import_the_other_commands_or_rich() -> None:
    probe = f"import json, sys; {RUN_PATH}; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                                           text=True).stdout))
    assert "gateway.service" in loaded  # the probe did import the run path
    unwanted = {"rich", "gateway.devices_cli", "bridge.cloud.cli", "bridge.cloud.sink",
                "bridge.cloud.report", "gateway.lab", "bridge.cloud.pg_store", "psycopg"}
    assert loaded & unwanted == set()


def test_every_command_is_still_listed_and_runs() -> None:
    out = CliRunner().invoke(main, ["--help"]).output
    for name in ("check", "command", "devices", "lab", "push-config", "report", "run", "sink", "status"):
        assert f"  {name} " in out
    assert CliRunner().invoke(main, ["devices", "--help"]).exit_code == 0
    assert CliRunner().invoke(main, ["nonsense"]).exit_code == 2
