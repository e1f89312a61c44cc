from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge.protocol.codec import Compression
from bridge.protocol.model import Reading
from bridge.protocol.records import ConfigStatus, ControlRecord
from gateway.config import BatchSection, RuleSpec
from gateway.control.config_push import MAX_DOCUMENT_BYTES, ConfigPusher, PushedConfigFile, read_document
from gateway.process.batcher import Batcher
from gateway.process.rules.engine import RuleEngine

FILE_RULES = [RuleSpec.model_validate({"name": "file", "metrics": "temp", "alert": {"max": 30}})]
FILE_BATCH = BatchSection(max_count=100, max_age_s=5.0, compression="zlib", level=6)


@dataclass
class Encoding:
    compression: Compression = "zlib"
    level: int = 6


@dataclass
class Rig:
    path: Path
    rules: RuleEngine = field(default_factory=lambda: RuleEngine(list(FILE_RULES)))
    batcher: Batcher = field(default_factory=lambda: Batcher(100, 65536, 5.0))
    encoding: Encoding = field(default_factory=Encoding)
    batches: list[list[Reading]] = field(default_factory=list)
    acks: list[ControlRecord] = field(default_factory=list)

    def pusher(self) -> ConfigPusher:
        return ConfigPusher(
            PushedConfigFile(self.path), file_rules=list(FILE_RULES), file_batch=FILE_BATCH,
            rules=self.rules, batcher=self.batcher, encoding=self.encoding,
            write_batch=self.batches.append, on_control=self.acks.append,
        )

    def alerts(self, value: float, ts: int = 0) -> int:
        return len(self.rules.process(Reading("dev", "temp", ts, value, None)).alerts)


def doc(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path / "data" / "pushed-config.json")


RULES_50 = [{"name": "pushed", "metrics": "temp", "alert": {"max": 50}}]


def test_valid_push_is_persisted_applied_and_acked(rig: Rig) -> None:
    p = rig.pusher()
    ack = p.handle(doc(version=3, rules=RULES_50, batch={"max_count": 10, "compression": "none"}))
    assert ack == ConfigStatus(version=3, status="applied", errors=[], current_version=3)
    assert rig.acks == [ack]
    assert p.version == 3 and p.snapshot() == {"applied": 1, "rejected": 0, "stale": 0, "load_errors": 0, "cleared": 0}
    assert rig.alerts(40) == 0 and rig.alerts(51) == 1  # threshold moved from 30 to 50
    assert rig.batcher.max_count == 10 and rig.encoding.compression == "none" and rig.encoding.level == 6
    saved = json.loads(rig.path.read_text())
    assert saved["version"] == 3 and saved["rules"][0]["alert"] == {"max": 50}
    assert [f for f in os.listdir(rig.path.parent) if f != rig.path.name] == []  # no temp file left


def test_open_batch_stays_open_unless_over_new_limits(rig: Rig) -> None:
    p = rig.pusher()
    for i in range(5):
        assert rig.batcher.add(Reading("dev", "hum", i, float(i), i)) is None
    p.handle(doc(version=1, batch={"max_count": 50}))
    assert rig.batches == [] and len(rig.batcher) == 5
    p.handle(doc(version=2, batch={"max_count": 3}))
    assert [len(b) for b in rig.batches] == [5] and len(rig.batcher) == 0  # written, not lost


def test_left_out_sections_mean_the_file_config(rig: Rig) -> None:
    p = rig.pusher()
    p.handle(doc(version=1, rules=[], batch={"max_count": 7, "compression": "none"}))
    assert rig.alerts(99) == 0 and rig.batcher.max_count == 7
    p.handle(doc(version=2))
    assert rig.alerts(99) == 1  # file rule (max 30) is back
    assert rig.batcher.max_count == FILE_BATCH.max_count and rig.encoding.compression == "zlib"


@pytest.mark.parametrize(
    ("payload", "version", "key"),
    [
        (doc(version=2, rules=[{"metrics": "temp", "alert": {"min": 5, "max": 1}}]), 2, "rules[0].alert"),
        (doc(version=2, rules=[{"metric": "temp"}]), 2, "rules[0].metric"),
        (doc(version=2, batch={"max_count": 0}), 2, "batch.max_count"),
        (doc(version=2, batch={"compression": "lz4"}), 2, "batch.compression"),
        (doc(version=2, buffer={"sync": "full"}), 2, "buffer"),
        (doc(rules=[]), None, "version"),
        (doc(version="2"), None, "version"),
        (doc(version=True), None, "version"),
        (doc(version=0), 0, "version"),
        (doc(version=2**53), 2**53, "version"),
        (b"{not json", None, "(syntax)"),
        (b'{"version": 2, "version": 3}', None, "(syntax)"),
        (b'{"version": 2, "rules": [{"valid": {"max": NaN}}]}', None, "(syntax)"),
        (b"\xff\xfe", None, "(syntax)"),
        (b"[1, 2]", None, "(top level)"),
        (b" " * (MAX_DOCUMENT_BYTES + 1), None, "(document)"),
    ],
)
def test_invalid_push_is_rejected_naming_the_key_and_changes_nothing(
    rig: Rig, payload: bytes, version: int | None, key: str
) -> None:
    p = rig.pusher()
    p.handle(doc(version=1, rules=RULES_50))
    ack = p.handle(payload)
    assert ack is not None and ack.status == "rejected" and ack.version == version
    assert ack.current_version == 1 and p.version == 1
    assert key in [e["key"] for e in ack.errors], ack.errors
    assert all(e["reason"] for e in ack.errors)
    assert rig.alerts(40) == 0 and rig.alerts(51) == 1  # version 1 still in force
    assert json.loads(rig.path.read_text())["version"] == 1


def test_version_not_newer_is_stale(rig: Rig) -> None:
    p = rig.pusher()
    p.handle(doc(version=5, rules=RULES_50))
    before = rig.path.read_bytes()
    for v in (5, 4):
        ack = p.handle(doc(version=v, rules=[]))
        assert ack is not None and (ack.status, ack.version, ack.current_version) == ("stale", v, 5)
    assert rig.alerts(40) == 0 and rig.alerts(51) == 1 and rig.path.read_bytes() == before
    assert p.snapshot()["stale"] == 2


def test_empty_payload_clears_nothing_and_is_not_answered(rig: Rig) -> None:
    p = rig.pusher()
    assert p.handle(b"") is None and rig.acks == [] and p.version == 0
    assert p.snapshot()["cleared"] == 1


def test_failed_persist_rejects_and_applies_nothing(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    p = rig.pusher()
    p.handle(doc(version=1, rules=RULES_50))
    before = rig.path.read_bytes()

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    ack = p.handle(doc(version=2, rules=[], batch={"max_count": 2}))
    monkeypatch.undo()
    assert ack is not None and ack.status == "rejected" and ack.errors[0]["key"] == "(storage)"
    assert "No space left" in ack.errors[0]["reason"]
    assert p.version == 1 and rig.alerts(51) == 1 and rig.batcher.max_count == 100
    assert rig.path.read_bytes() == before
    assert sorted(os.listdir(rig.path.parent)) == [rig.path.name]  # the temp file is gone


def test_unwritable_location_rejects(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    rig = Rig(tmp_path / "not-a-dir" / "pushed-config.json")
    ack = rig.pusher().handle(doc(version=1, rules=[]))
    assert ack is not None and ack.status == "rejected" and ack.errors[0]["key"] == "(storage)"
    assert rig.alerts(99) == 1


def test_persisted_document_is_applied_at_start(rig: Rig) -> None:
    rig.pusher().handle(doc(version=4, rules=RULES_50, batch={"max_age_s": 1.5}))
    fresh = Rig(rig.path)
    p = fresh.pusher()
    p.load_persisted()
    assert p.version == 4 and fresh.alerts(40) == 0 and fresh.alerts(51) == 1
    assert fresh.batcher.max_age_s == 1.5 and fresh.acks == []
    stale = p.handle(doc(version=4))
    assert stale is not None and stale.status == "stale"


def test_no_persisted_document_keeps_the_file_config(rig: Rig) -> None:
    p = rig.pusher()
    p.load_persisted()
    assert p.version == 0 and rig.alerts(31) == 1 and p.snapshot()["load_errors"] == 0


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00\x01garbage", b'{"version": 3, "rules": [{"alert": {"min": 2, "max": 1}}]}', b'{"rules": []}',
     b'{"version": 3, "rules": ['],  # the last one is a torn write
)
def test_corrupt_persisted_file_is_set_aside(rig: Rig, content: bytes) -> None:
    rig.path.parent.mkdir(parents=True)
    rig.path.write_bytes(content)
    p = rig.pusher()
    p.load_persisted()
    assert p.version == 0 and p.snapshot()["load_errors"] == 1
    assert rig.alerts(31) == 1  # file rules in force
    assert not rig.path.exists()
    assert (rig.path.parent / "pushed-config.json.bad").read_bytes() == content
    applied = p.handle(doc(version=1, rules=[]))
    assert applied is not None and applied.status == "applied"


def test_example_document_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "conf" / "pushed-config.example.toml"
    d = read_document(example)
    assert d.version == 2 and d.rules and d.batch is not None
    assert read_document(example, version=7).version == 7


def test_alert_raised_under_the_old_threshold_clears_under_the_new_one(rig: Rig) -> None:
    assert rig.alerts(40) == 1  # raised: above the file's max 30
    rig.pusher().handle(doc(version=1, rules=RULES_50))
    outcome = rig.rules.process(Reading("dev", "temp", 1, 40.0, None))
    assert [a.change.state for a in outcome.alerts] == ["cleared"]
