"""``edge-gateway fleet``: bad options exit 2 naming the problem, before anything is sent; an
unreachable broker exits 1 without a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.cloud.sink_store import SinkStore
from gateway.cli import main
from tests.support import free_port

URL = "mqtt://127.0.0.1:1"


@pytest.mark.parametrize(("args", "hint"), [
    ([], "--duration or --batches"),
    (["--duration", "1", "--batches", "5"], "--duration or --batches"),
    (["--batches", "0"], "--batches"),
    (["--batches", "5", "--duplicates", "1.5"], "--duplicates"),
    (["--batches", "5", "--replays", "-0.1"], "--replays"),
    (["--batches", "5", "--gateways", "0"], "--gateways"),
    (["--batches", "5", "--rate", "-1"], "--rate"),
    (["--batches", "5", "--batch-readings", "0"], "--batch-readings"),
    (["--batches", "5", "--prefix", "edge/+/x"], "--prefix"),
])
def test_bad_send_options_exit_2(args: list[str], hint: str) -> None:
    res = CliRunner().invoke(main, ["fleet", "send", "--url", URL, *args])
    assert res.exit_code == 2, res.output
    assert hint in res.output


def test_a_bad_url_exits_2() -> None:
    res = CliRunner().invoke(main, ["fleet", "send", "--url", "http://x", "--batches", "1"])
    assert res.exit_code == 2 and "--url" in res.output


def test_an_unreachable_broker_exits_1() -> None:
    res = CliRunner().invoke(main, ["fleet", "send", "--url", f"mqtt://127.0.0.1:{free_port()}", "--batches", "1"])
    assert res.exit_code == 1
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_verify_refuses_what_is_not_a_manifest(tmp_path: Path) -> None:
    db = tmp_path / "sink.sqlite"
    SinkStore(db).close()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = CliRunner().invoke(main, ["fleet", "verify", "--db", str(db), "--manifest", str(bad)])
    assert res.exit_code == 2 and "--manifest" in res.output
    res = CliRunner().invoke(main, ["fleet", "verify", "--db", str(tmp_path / "none.sqlite"), "--manifest", str(bad)])
    assert res.exit_code == 2 and "--db" in res.output


def test_verify_of_a_store_that_is_not_a_sink_database_exits_1(tmp_path: Path) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_text('{"format": 1, "readings": 0, "checksum": "0", "alerts": 0, "gateways": {}}')
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all, just bytes" * 100)
    res = CliRunner().invoke(main, ["fleet", "verify", "--db", str(junk), "--manifest", str(manifest)])
    assert res.exit_code == 1, res.output
    empty = tmp_path / "empty.sqlite"
    SinkStore(empty).close()
    res = CliRunner().invoke(main, ["fleet", "verify", "--db", str(empty), "--manifest", str(manifest)])
    assert res.exit_code == 0 and "OK" in res.output  # an empty manifest, an empty store
