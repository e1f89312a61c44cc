"""The sink's file receiver (``--files-dir``) against mosquitto, on SQLite and PostgreSQL: a plain
MQTT client plays the gateway, publishing manifests and chunks and answering the receipts."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bridge.cloud.file_receiver import FileOptions
from bridge.cloud.report import build_report
from bridge.cloud.sink import Sink
from bridge.cloud.sink_port import SinkStorePort, open_sink_store
from bridge.cloud.sink_writes import FileWrite
from bridge.mqtt.backoff import DecorrelatedJitter
from bridge.mqtt.connection import MqttConnection
from bridge.mqtt.types import ClientSettings, Message
from bridge.protocol.files import Manifest, Receipt, decode_receipt, encode_chunk, encode_manifest, new_file_id
from bridge.protocol.topics import CloudTopics
from bridge.transfer.plan import plan_file, read_chunk
from gateway.cli import main
from tests.e2e.exactly_once import serving
from tests.e2e.test_sink import FlakyStore, envelope
from tests.support import Mosquitto, eventually

pytestmark = pytest.mark.timeout(60)

GW = CloudTopics("gw-1")
CHUNK = 1024


class Gateway:
    """A plain MQTT client publishing one gateway's uploads and answering the sink's receipts
    (``answer``: act as a gateway does, send every chunk after a manifest and what a ``missing``
    receipt asks for). ``sent`` lists the chunk indexes sent."""

    conn: MqttConnection

    def __init__(self) -> None:
        self.receipts: list[Receipt] = []
        self.files: dict[str, tuple[Path, Manifest]] = {}
        self.sent: list[int] = []
        self.answer = False

    def on_message(self, message: Message) -> None:
        receipt = decode_receipt(message.payload)
        self.receipts.append(receipt)
        if self.answer and receipt.state == "missing" and receipt.id in self.files:
            if receipt.manifest:
                self.conn.publish(GW.files.manifest("up", receipt.id), encode_manifest(self.files[receipt.id][1]))
            for index in receipt.missing:
                self.chunk(receipt.id, index, resend=True)

    def manifest(self, path: Path, manifest: Manifest) -> None:
        self.files[manifest.id] = (path, manifest)
        self.conn.publish(GW.files.manifest("up", manifest.id), encode_manifest(manifest))
        if self.answer:
            for index in range(manifest.chunks):
                self.chunk(manifest.id, index)

    def chunk(self, file_id: str, index: int, *, resend: bool = False) -> None:
        path, manifest = self.files[file_id]
        data, digest = read_chunk(path, manifest, index)
        self.sent.append(index)
        self.conn.publish(GW.files.chunk("up", file_id),
                          encode_chunk(file_id, index, index * manifest.chunk_size, data, resend=resend, sha256=digest))

    def states(self, file_id: str) -> list[str]:
        return [r.state for r in self.receipts if r.id == file_id]


@contextlib.asynccontextmanager
async def gateway(url: str) -> AsyncIterator[Gateway]:
    settings = ClientSettings(client_id=f"gw-{random.getrandbits(32):x}", max_inflight=1000)
    gw = Gateway()
    gw.conn = await MqttConnection.open(url, settings, on_message=gw.on_message)
    try:
        await gw.conn.subscribe([(GW.files.filter("up", "receipt"), 1)])
        yield gw
    finally:
        await gw.conn.close()


def sink(url: str, store: SinkStorePort, root: Path, **kw: Any) -> Sink:
    options = FileOptions(root, max_bytes=kw.pop("max_bytes", 1024**2), stall_s=kw.pop("stall_s", 30.0),
                          expire_s=kw.pop("expire_s", 3600.0))
    return Sink(store, [url], backoff=DecorrelatedJitter(0.05, 0.5), connect_timeout_s=5.0, files=options, **kw)


def some_file(tmp_path: Path, size: int, name: str = "dump.bin") -> tuple[Path, Manifest]:
    path = tmp_path / "outbox" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(random.Random(size).randbytes(size))
    return path, plan_file(path, chunk_size=CHUNK)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_row(store: SinkStorePort, file_id: str) -> dict[str, Any] | None:
    return next((f for f in store.files() if f["id"] == file_id), None)


async def test_chunks_out_of_order_with_duplicates_make_one_verified_file(
        mosquitto: Mosquitto, sink_db: str | Path, tmp_path: Path) -> None:
    path, manifest = some_file(tmp_path, 10 * CHUNK + 123)
    root = tmp_path / "files"
    order = list(range(manifest.chunks))
    random.Random(7).shuffle(order)
    with open_sink_store(sink_db, durable=False) as store:
        async with gateway(mosquitto.url) as gw, serving(sink(mosquitto.url, store, root), 10) as s:
            gw.manifest(path, manifest)  # a new transfer: not answered (its chunks follow)
            await eventually(lambda: file_row(store, manifest.id) is not None)
            assert gw.states(manifest.id) == []
            sends = order[:4] + order[:2] + order[4:-1] + [order[4], order[-1]]  # 3 duplicates
            for seq, index in enumerate(sends, 1):  # telemetry between the chunks: both acknowledged
                gw.chunk(manifest.id, index)
                gw.conn.publish(GW.telemetry, envelope("gw-1", seq))
            await eventually(lambda: "stored" in gw.states(manifest.id))
            await eventually(lambda: store.seqs("gw-1") == list(range(1, len(sends) + 1)))
            assert s.files is not None
            assert (s.files.counters.stored, s.files.counters.duplicate_chunks) == (1, 3)
            gw.manifest(path, manifest)  # a manifest of a file already stored: ``stored`` again
            await eventually(lambda: gw.states(manifest.id).count("stored") == 2)
            row = file_row(store, manifest.id)
    installed = root / "gw-1" / "dump.bin"
    assert sha(installed) == manifest.sha256 == sha(path)
    assert gw.receipts[-1].sha256 == manifest.sha256
    assert row is not None and (row["state"], row["path"], row["duplicates"]) == ("stored", "gw-1/dump.bin", 3)
    assert row["received_chunks"] == row["chunks"] == manifest.chunks
    assert sorted(os.listdir(root / ".incoming" / "gw-1")) == []  # no work files left
    listed = build_report(sink_db)["files"]
    assert [(f["id"], f["state"], f["sha256"]) for f in listed] == [(manifest.id, "stored", manifest.sha256)]


async def test_receiver_restarted_mid_transfer_with_its_broker_session_lost_completes_the_file(
        mosquitto: Mosquitto, sink_db: str | Path, tmp_path: Path) -> None:
    """The issue's test: the sink stops with half the chunks, its session is gone (clean session),
    the chunks published meanwhile are lost; at restart it asks for exactly those, the gateway
    answers, the file completes."""
    path, manifest = some_file(tmp_path, 20 * CHUNK)
    root = tmp_path / "files"
    half = manifest.chunks // 2
    with open_sink_store(sink_db, durable=False) as store:
        async with gateway(mosquitto.url) as gw:
            async with serving(sink(mosquitto.url, store, root, persistent=False), 10):
                gw.manifest(path, manifest)
                for index in range(half):
                    gw.chunk(manifest.id, index)
                await eventually(lambda: (file_row(store, manifest.id) or {}).get("received_chunks") == half)
            for index in range(half, manifest.chunks):  # nobody subscribed: lost
                gw.chunk(manifest.id, index)
            await eventually(lambda: gw.conn.pending_count == 0)
            gw.sent.clear()
            gw.answer = True
            async with serving(sink(mosquitto.url, store, root, persistent=False), 10):
                await eventually(lambda: "stored" in gw.states(manifest.id))
            row = file_row(store, manifest.id)
    asked = [r for r in gw.receipts if r.state == "missing"]
    assert asked[-1].missing == tuple(range(half, manifest.chunks)) and not asked[-1].manifest
    assert sorted(gw.sent) == list(range(half, manifest.chunks))  # exactly what was lost, once each
    assert sha(root / "gw-1" / "dump.bin") == manifest.sha256
    assert row is not None and row["state"] == "stored"


async def test_a_chunk_of_an_unknown_file_asks_for_the_manifest(mosquitto: Mosquitto, tmp_path: Path) -> None:
    path, manifest = some_file(tmp_path, 3 * CHUNK)
    with open_sink_store(tmp_path / "sink.sqlite", durable=False) as store:
        async with gateway(mosquitto.url) as gw, serving(sink(mosquitto.url, store, tmp_path / "files"), 10) as s:
            gw.files[manifest.id] = (path, manifest)  # the manifest was never received
            gw.chunk(manifest.id, 1)
            await eventually(lambda: gw.states(manifest.id) == ["missing"])
            assert gw.receipts[0].manifest and gw.receipts[0].missing == ()
            assert s.counters.invalid_reasons["unknown_file"] == 1
            gw.manifest(path, manifest)  # the manifest it asked for: answered with what it misses
            await eventually(lambda: gw.states(manifest.id) == ["missing", "missing"])
            assert gw.receipts[-1].missing == (0, 1, 2) and not gw.receipts[-1].manifest
            for index in gw.receipts[-1].missing:
                gw.chunk(manifest.id, index)
            await eventually(lambda: "stored" in gw.states(manifest.id))
    assert sha(tmp_path / "files" / "gw-1" / "dump.bin") == manifest.sha256


def tree(top: Path) -> set[str]:
    return {str(p.relative_to(top)) for p in top.rglob("*")}


async def test_hostile_names_and_oversized_files_are_refused_and_nothing_is_written_outside(
        mosquitto: Mosquitto, sink_db: str | Path, tmp_path: Path) -> None:
    path, good = some_file(tmp_path, 2 * CHUNK)
    big_path, big = some_file(tmp_path, 40 * CHUNK, "big.bin")
    hostile = {name: Manifest(new_file_id(), name, good.size, good.chunk_size, good.sha256, good.chunk_sha256)
               for name in ("../../etc/passwd", ".bashrc", "a/b")}
    root = tmp_path / "files"
    before = tree(tmp_path)
    with open_sink_store(sink_db, durable=False) as store:
        async with gateway(mosquitto.url) as gw, \
                serving(sink(mosquitto.url, store, root, max_bytes=20 * CHUNK), 10) as s:
            for manifest in [*hostile.values(), big]:
                gw.manifest(big_path if manifest is big else path, manifest)
                gw.chunk(manifest.id, 0)
            await eventually(lambda: all(gw.states(m.id)[:1] == ["failed"] for m in [*hostile.values(), big]))
            assert sorted(r.reason for r in gw.receipts if r.state == "failed") == [
                "bad_name", "bad_name", "bad_name", "too_large"]
            assert s.counters.invalid_reasons["bad_name"] == 3 and s.counters.invalid_reasons["too_large"] == 1
            await eventually(lambda: s.counters.invalid_reasons["unknown_file"] == 4)  # their chunks
            rows = {f["id"]: f for f in store.files()}
    assert {m.id: (rows[m.id]["state"], rows[m.id]["reason"]) for m in hostile.values()} == {
        m.id: ("failed", "bad_name") for m in hostile.values()}
    assert rows[hostile["../../etc/passwd"].id]["name"] == "../../etc/passwd"  # only text in the database
    assert (rows[big.id]["state"], rows[big.id]["reason"]) == ("failed", "too_large")
    created = tree(tmp_path) - before
    outside = {p for p in created if not p.startswith("files") and not p.startswith("sink.sqlite")}
    assert outside == set()
    assert {p for p in created if p.startswith("files")} == {"files", "files/.incoming"}  # no file, no directory
    assert "passwd" not in " ".join(created) and "bashrc" not in " ".join(created)
    invalid = build_report(sink_db)["gateways"]["gw-1"]["invalid"]
    assert (invalid["bad_name"], invalid["too_large"], invalid["unknown_file"]) == (3, 1, 4)


async def test_the_sink_command_receives_files_and_report_lists_them(mosquitto: Mosquitto, tmp_path: Path) -> None:
    path, manifest = some_file(tmp_path, 3 * CHUNK + 5)
    big_path, big = some_file(tmp_path, 8 * CHUNK, "big.bin")
    db, root = tmp_path / "sink.sqlite", tmp_path / "files"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "sink", "--url", mosquitto.url, "--db", str(db), "--files-dir", str(root),
        "--files-max-bytes", str(4 * CHUNK), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with gateway(mosquitto.url) as gw:
            gw.answer = True

            async def offered() -> bool:  # until the sink is up: every manifest gets an answer
                if not gw.states(manifest.id):
                    gw.manifest(path, manifest)
                return "stored" in gw.states(manifest.id)

            await eventually(offered, timeout=30, interval=0.5)
            gw.manifest(big_path, big)
            await eventually(lambda: gw.states(big.id)[:1] == ["failed"])
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "file receiver stopped: 1 files stored, 1 failed" in err.decode()
    res = CliRunner().invoke(main, ["report", "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    listed = {f["name"]: f for f in json.loads(res.output)["files"]}
    assert (listed["dump.bin"]["state"], listed["dump.bin"]["path"], listed["dump.bin"]["sha256"]) == (
        "stored", "gw-1/dump.bin", manifest.sha256)
    assert (listed["big.bin"]["state"], listed["big.bin"]["size"], listed["big.bin"]["path"]) == (
        "failed", big.size, None)
    assert sha(root / "gw-1" / "dump.bin") == manifest.sha256
    text = CliRunner().invoke(main, ["report", "--db", str(db)], env={"COLUMNS": "80"}).output
    assert "Files (2)" in text and "gw-1/dump.bin" in text and "too_large" in text


async def test_a_name_taken_keeps_both_files(mosquitto: Mosquitto, tmp_path: Path) -> None:
    first_path, first = some_file(tmp_path, 2 * CHUNK)
    second_path = tmp_path / "second" / "dump.bin"
    second_path.parent.mkdir()
    second_path.write_bytes(b"another dump" * 100)
    second = plan_file(second_path, chunk_size=CHUNK)
    root = tmp_path / "files"
    with open_sink_store(tmp_path / "sink.sqlite", durable=False) as store:
        async with gateway(mosquitto.url) as gw, serving(sink(mosquitto.url, store, root), 10):
            gw.answer = True
            gw.manifest(first_path, first)
            await eventually(lambda: "stored" in gw.states(first.id))
            gw.manifest(second_path, second)
            await eventually(lambda: "stored" in gw.states(second.id))
            paths = {f["id"]: f["path"] for f in store.files()}
    assert paths == {first.id: "gw-1/dump.bin", second.id: f"gw-1/dump.{second.id[:8]}.bin"}
    assert sha(root / paths[first.id]) == first.sha256 and sha(root / paths[second.id]) == second.sha256


async def test_a_corrupt_chunk_is_asked_for_again_and_a_lying_manifest_fails(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    path, manifest = some_file(tmp_path, 4 * CHUNK)
    liar = Manifest(new_file_id(), "liar.bin", manifest.size, manifest.chunk_size, "0" * 64, manifest.chunk_sha256)
    root = tmp_path / "files"
    with open_sink_store(tmp_path / "sink.sqlite", durable=False) as store:
        async with gateway(mosquitto.url) as gw, serving(sink(mosquitto.url, store, root, stall_s=0.3), 10) as s:
            gw.manifest(path, manifest)
            for index in range(manifest.chunks):
                data, _ = read_chunk(path, manifest, index)
                if index == 2:  # flipped on the way: its own SHA-256 no longer matches
                    data = bytes([data[0] ^ 1]) + data[1:]
                    gw.conn.publish(GW.files.chunk("up", manifest.id),
                                    encode_chunk(manifest.id, 2, 2 * CHUNK, data, sha256=bytes(32)))
                else:
                    gw.chunk(manifest.id, index)
            # nothing more comes: after the stall the sink asks for exactly the chunk it could not take
            await eventually(lambda: any(r.state == "missing" and r.missing == (2,) for r in gw.receipts))
            assert s.counters.invalid_reasons["hash_mismatch"] == 1
            gw.chunk(manifest.id, 2, resend=True)
            await eventually(lambda: "stored" in gw.states(manifest.id))
            gw.answer = True
            gw.manifest(path, liar)  # every chunk matches its listed hash, the whole does not
            await eventually(lambda: "failed" in gw.states(liar.id))
            row = next(f for f in store.files() if f["id"] == liar.id)
    assert [r.reason for r in gw.receipts if r.id == liar.id and r.state == "failed"] == ["hash_mismatch"]
    assert (row["state"], row["reason"], row["path"]) == ("failed", "hash_mismatch", None)
    assert sorted(os.listdir(root / "gw-1")) == ["dump.bin"]  # the lying file was never installed
    assert os.listdir(root / ".incoming" / "gw-1") == []


async def test_a_chunk_whose_row_is_not_committed_is_not_acknowledged_and_comes_again(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    path, manifest = some_file(tmp_path, 3 * CHUNK)
    with FlakyStore(tmp_path / "sink.sqlite", failures=2, kind=FileWrite) as store:
        async with gateway(mosquitto.url) as gw, serving(sink(mosquitto.url, store, tmp_path / "files"), 10) as s:
            gw.manifest(path, manifest)
            for index in range(manifest.chunks):
                gw.chunk(manifest.id, index)
            # the broker redelivers what the sink did not acknowledge, on its persistent session
            await eventually(lambda: "stored" in gw.states(manifest.id), timeout=20)
            assert s.counters.store_errors == 2 and s.counters.connects >= 2
            row = file_row(store, manifest.id)
    assert row is not None and (row["state"], row["received_chunks"]) == ("stored", manifest.chunks)
    assert sha(tmp_path / "files" / "gw-1" / "dump.bin") == manifest.sha256
