"""``edge-gateway files send`` / ``files list`` (CliRunner, real files and a real uploads.db)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bridge.transfer.plan import plan_file
from gateway.cli import main
from gateway.files.uploads_db import UploadsDb, new_row


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(f'[gateway]\nid = "gw1"\ndata_dir = "{tmp_path / "data"}"\n[files]\nmax_file_bytes = 1000\n')
    return path


def test_send_copies_atomically_into_the_outbox_with_its_metadata(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    src = tmp_path / "report.csv"
    src.write_bytes(b"a,b\n1,2\n")
    result = CliRunner().invoke(main, ["files", "send", str(src), "--name", "day-1.csv", "--content-type",
                                       "text/csv", "--meta", "site=north", "--meta", "kind=daily", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    outbox = tmp_path / "data" / "files" / "outbox"
    assert (outbox / "day-1.csv").read_bytes() == b"a,b\n1,2\n"
    assert json.loads((outbox / ".day-1.csv.meta").read_text()) == {
        "content_type": "text/csv", "meta": {"site": "north", "kind": "daily"}}
    assert sorted(p.name for p in outbox.iterdir()) == [".day-1.csv.meta", "day-1.csv"]  # no temporary left
    again = CliRunner().invoke(main, ["files", "send", str(src), "--name", "day-1.csv", "-c", str(cfg)])
    assert again.exit_code == 1 and "already waits" in again.output
    assert (outbox / "day-1.csv").read_bytes() == b"a,b\n1,2\n"


def test_send_refuses_bad_names_bad_meta_and_too_large_files(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    src = tmp_path / "x.bin"
    src.write_bytes(b"x")
    for args in (["--name", "../evil"], ["--name", ".hidden"], ["--meta", "novalue"],
                 ["--content-type", "x" * 300], ["--content-type", ""], ["--meta", "k=" + "v" * 5000]):
        result = CliRunner().invoke(main, ["files", "send", str(src), *args, "-c", str(cfg)])
        assert result.exit_code == 2, (args, result.output)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 1001)
    assert CliRunner().invoke(main, ["files", "send", str(big), "-c", str(cfg)]).exit_code == 2
    assert not (tmp_path / "data" / "files" / "outbox").exists()  # refused before anything was written


def test_list_shows_transfers_under_way_and_finished(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert CliRunner().invoke(main, ["files", "list", "-c", str(cfg)]).output.strip() == "no uploads"
    src = tmp_path / "a.bin"
    src.write_bytes(b"y" * 5000)
    db = UploadsDb(tmp_path / "data" / "files" / "uploads.db")
    db.open()
    first, second = new_row(plan_file(src, chunk_size=1024)), new_row(plan_file(src, chunk_size=1024, name="b.bin"))
    db.insert(first)
    db.insert(second)
    second.acked[0] = second.acked[1] = 1
    second.state = "sending"
    db.save(second)
    db.finish(first, "stored")
    db.close()
    result = CliRunner().invoke(main, ["files", "list", "-c", str(cfg), "--json"])
    assert result.exit_code == 0, result.output
    listed = {t["id"]: t for t in json.loads(result.output)}
    assert listed[first.id]["state"] == "stored"
    assert (listed[second.id]["state"], listed[second.id]["acked"], listed[second.id]["chunks"]) == ("sending", 2, 5)
    text = CliRunner().invoke(main, ["files", "list", "-c", str(cfg)]).output
    assert "2/5 chunks" in text and "b.bin" in text


def test_the_files_group_lists_its_commands() -> None:
    result = CliRunner().invoke(main, ["files", "--help"])
    assert result.exit_code == 0 and "send" in result.output and "list" in result.output
