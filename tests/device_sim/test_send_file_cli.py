"""``device-sim send-file`` usage errors (exit 2, before any connection) and the manifest it builds."""

from __future__ import annotations

import hashlib
from pathlib import Path

from click.testing import CliRunner

from device_sim.cli import main
from device_sim.file_upload import LocalFile, wanted


def test_bad_usage_exits_2_naming_the_option(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 3000)
    runner = CliRunner()
    for args, option in ((["--chunk-bytes", "10"], "--chunk-bytes"), (["--file-id", "../x"], "--file-id"),
                         (["--meta", "novalue"], "--meta")):
        result = runner.invoke(main, ["send-file", str(path), "--device", "d1", "--port", "1", *args])
        assert result.exit_code == 2, result.output
        assert option in result.output
    result = runner.invoke(main, ["send-file", str(path), "--device", "a/b", "--port", "1"])
    assert result.exit_code == 2 and "--device" in result.output


def test_the_manifest_and_the_default_file_id(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 3000)
    local = LocalFile.describe(path, chunk_bytes=1024, content_type="text/plain", meta={"k": "v"})
    digest = hashlib.sha256(b"x" * 3000).hexdigest()
    assert local.manifest == {"name": "f.bin", "size": 3000, "sha256": digest, "chunk_size": 1024,
                              "content_type": "text/plain", "meta": {"k": "v"}}
    assert local.file_id == digest[:32] and local.chunks == 3
    assert local.read_chunk(2) == b"x" * (3000 - 2048)
    assert wanted({"state": "missing", "chunks": [[0, 0], [2, 9], "junk", [5]]}, 3) == [0, 2]
